"""The read cache: pages a fetch decoded from the page file, kept for the next fetch.

A dashboard fetches the same windows again and again; the pages of those windows that are no
longer being written sit in the page file as compressed blobs.  Each handle keeps the pages
its fetches decoded (native/DESIGN.md I17) and uses a copy only while the page file still
holds that version of the page.  These tests check that a second fetch is answered from it,
that a page the writer changed is never answered from an old copy, that a small cache evicts
and stays right, that threads share it, and the option's errors.
"""
import threading

import pytest

import tismet

NOW = 1_700_000_000
ARCHIVES = [(10, 2000), (60, 1440)]


def write(db, count, base=0.0, points=30):
    for i in range(count):
        name = "m.%04d" % i
        if not db.exists(name):
            db.create(name, ARCHIVES, aggregation_method="sum")
        db.update_many(name, [(NOW - 10 * k, base + i + k) for k in range(points)], now=NOW)


def fetch_all(db, count):
    return db.fetch_many(["m.%04d" % i for i in range(count)], NOW - 600, NOW, now=NOW)


def expected(count, base=0.0, points=30):
    out = []
    for i in range(count):
        want = {NOW - 10 * k: base + i + k for k in range(points)}
        out.append([want.get(NOW - 600 + 10 * j) for j in range(1, 61)])
    return out


def values(results):
    return [vals for _, vals in results]


class SmallCache(tismet.Database):
    """A handle whose read cache holds `pages` pages (the Python option counts MiB)."""

    pages = 4

    def _configure(self, opts):
        opts.read_cache_pages = self.pages


def test_a_second_fetch_is_answered_from_the_cache(tmp_path):
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        write(db, 50)                  # close: every page goes to the page file as a blob
    with tismet.Database(path, readonly=True) as db:
        first = fetch_all(db, 50)
        st = db.stats()
        assert st["read_cache_hits"] == 0
        assert st["read_cache_misses"] >= 50
        assert st["read_cache_pages"] == st["read_cache_misses"]
        second = fetch_all(db, 50)
        st2 = db.stats()
        assert st2["read_cache_hits"] == st["read_cache_misses"]
        assert st2["read_cache_misses"] == st["read_cache_misses"]
    assert values(first) == values(second) == expected(50)


def test_a_page_the_writer_changed_is_read_again(tmp_path):
    """A reader cached every page; the writer then rewrites the points of 5 of 40 metrics
    and closes (their pages get new blobs).  The reader's next fetch decodes those pages
    again and returns the new values; the other pages come from the cache."""
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        write(db, 40)
    reader = tismet.Database(path, readonly=True)
    try:
        assert values(fetch_all(reader, 40)) == expected(40)
        before = reader.stats()
        with tismet.Database(path) as db:
            # hot while the writer is open: the reader reads the working copies
            write(db, 5, base=1000.0)
            got = values(fetch_all(reader, 40))
            mid = reader.stats()
            assert got[:5] == expected(5, base=1000.0)
            assert got[5:] == expected(40)[5:]
        # the 10 changed pages (5 metrics, 2 archives) were hot: not through the cache
        assert mid["read_cache_misses"] == before["read_cache_misses"]
        assert mid["read_cache_hits"] - before["read_cache_hits"] == 70
        got = values(fetch_all(reader, 40))     # now from the page file again
        after = reader.stats()
        assert got[:5] == expected(5, base=1000.0)
        assert got[5:] == expected(40)[5:]
        # their new blobs missed, the other pages hit again
        assert after["read_cache_misses"] - mid["read_cache_misses"] == 10
        assert after["read_cache_hits"] - mid["read_cache_hits"] == 70
    finally:
        reader.close()


def test_a_small_cache_evicts_and_stays_right(tmp_path):
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        write(db, 30)
    with SmallCache(path, readonly=True) as db:
        for _ in range(3):
            assert values(fetch_all(db, 30)) == expected(30)
            assert db.stats()["read_cache_pages"] == 4
        # the same few pages again and again: hits
        hits = db.stats()["read_cache_hits"]
        for _ in range(5):
            assert values(fetch_all(db, 2)) == expected(2)
        assert db.stats()["read_cache_hits"] >= hits + 8


def test_threads_share_one_cache(tmp_path):
    """Eight threads fetch through one handle whose cache holds 4 of the 60 pages they
    read: constant eviction under contention, and every answer right."""
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        write(db, 30)
    want = expected(30)
    errors = []
    with SmallCache(path, readonly=True) as db:
        def work(k):
            try:
                for r in range(40):
                    first = (k * 7 + r) % 30
                    names = ["m.%04d" % ((first + j) % 30) for j in range(5)]
                    got = db.fetch_many(names, NOW - 600, NOW, now=NOW)
                    assert values(got) == [want[(first + j) % 30] for j in range(5)]
            except Exception as e:      # reported by the main thread
                errors.append(e)
        threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        st = db.stats()
    assert not errors, errors[0]
    assert st["read_cache_pages"] == 4
    assert st["read_cache_hits"] + st["read_cache_misses"] >= 8 * 40 * 5


def test_turned_off(tmp_path, monkeypatch):
    path = str(tmp_path / "db")
    with tismet.Database(path) as db:
        write(db, 10)
    for handle in (lambda: tismet.Database(path, readonly=True, read_cache_mb=0),
                   lambda: (monkeypatch.setenv("TISMET_READ_CACHE_MB", "0"),
                            tismet.Database(path, readonly=True))[1]):
        with handle() as db:
            fetch_all(db, 10)
            assert values(fetch_all(db, 10)) == expected(10)
            st = db.stats()
            assert (st["read_cache_pages"], st["read_cache_hits"],
                    st["read_cache_misses"]) == (0, 0, 0)


@pytest.mark.parametrize("bad", [-1, 65537, "lots", 1.5, "1e3"])
def test_bad_sizes_are_refused(tmp_path, monkeypatch, bad):
    path = str(tmp_path / "db")
    tismet.Database(path).close()
    with pytest.raises(tismet.InvalidArgument, match="read_cache_mb"):
        tismet.Database(path, readonly=True, read_cache_mb=bad)
    monkeypatch.setenv("TISMET_READ_CACHE_MB", str(bad))
    with pytest.raises(tismet.InvalidArgument, match="TISMET_READ_CACHE_MB"):
        tismet.Database(path, readonly=True)
