"""graphite-web's own UI on Tismet, in a real headless Chromium.

A metric with a distinctive shape (a triangle: up from 0 to 100 over the first half of a ten
minute window, back down to 0 over the second half) is sent to carbon of the demo stack; then
Chromium, driven over the DevTools protocol on a pipe (no port), opens

* the composer (``/composer/?target=...&colorList=ff0000&...``): graphite-web's composer
  turns its query string into the graph's render URL;
* a dashboard (state posted to ``/dashboard/create-temporary``, opened at ``/dashboard/<name>``):
  graphite-web's dashboard builds the graph's URL from the state's graph parameters;

waits until the graph image in the page has loaded, takes a screenshot, and checks with Pillow
that the graph area shows the triangle in the line colour (red pixels across the plot, low at
both ends, high in the middle), and that the page raised no JavaScript exception, logged no
console error and had no failed request. A direct /render PNG is checked the same way.

Screenshots are kept under the test's tmp directory (printed on failure) and, with
``TISMET_SCREENSHOT_DIR`` set, copied there.
"""

import base64
import io
import json
import os
import select
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from demo_stack import DemoStack, poll

pytestmark = pytest.mark.timeout(240)

Image = pytest.importorskip("PIL.Image")

STEP = 10
WINDOW = 600  # seconds shown
POINTS = WINDOW // STEP
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
GRAPH = dict(colorList="ff0000", lineWidth="3", bgcolor="ffffff", fgcolor="000000",
             majorGridLineColor="dddddd", minorGridLineColor="eeeeee", hideLegend="true",
             yMin="0", yMax="100")


def find_chromium():
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


# ----------------------------------------------------------------------------- DevTools


class Browser:
    """Headless Chromium driven over --remote-debugging-pipe (fd 3: commands in, fd 4: out)."""

    def __init__(self, binary, profile_dir, log_path):
        self.log_path = log_path
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--remote-debugging-pipe", "--user-data-dir=" + str(profile_dir),
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--hide-scrollbars", "--mute-audio",
                "--force-device-scale-factor=1", "--window-size=1200,900", "about:blank"]

        # bash puts the pipe ends where chromium expects them (dash takes one-digit fds only)
        wrapper = [shutil.which("bash") or "/bin/bash", "-c",
                   'exec "$0" "$@" 3<&%d 4>&%d' % (to_chrome_r, from_chrome_w)]
        env = dict(os.environ, TZ="UTC")
        env.pop("LD_PRELOAD", None)   # tox -e sanitize preloads ASan for Python: not for chromium
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(wrapper + args, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log,
                                         pass_fds=(to_chrome_r, from_chrome_w),
                                         start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.events = []

    def close(self):
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:  # chromium's helpers (zygote, renderers) share its process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _read_message(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError("no message from chromium")
            ready, _, _ = select.select([self._r], [], [], min(left, 1))
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise ConnectionError("chromium closed the pipe (exit %s)" % self.proc.poll())
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, session=None, timeout=30):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError("%s: %s" % (method, reply["error"]))
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def pump(self, seconds):
        """Collect events for a while."""
        deadline = time.time() + seconds
        try:
            while True:
                reply = self._read_message(deadline)
                if "method" in reply:
                    self.events.append(reply)
        except TimeoutError:
            pass

    def new_page(self):
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(domain + ".enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        return Page(self, session)


class Page:
    def __init__(self, browser, session):
        self.browser = browser
        self.session = session
        self.origin = None
        self.external = set()  # off-stack URLs the page asked for

    def call(self, method, params=None, timeout=30):
        return self.browser.call(method, params, session=self.session, timeout=timeout)

    def navigate(self, url):
        self.browser.events.clear()
        self.origin = "/".join(url.split("/")[:3]) + "/"
        res = self.call("Page.navigate", {"url": url})
        assert not res.get("errorText"), res

    def evaluate(self, expression):
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in res:
            raise RuntimeError("evaluate %r: %s" % (expression, res["exceptionDetails"]))
        return res["result"].get("value")

    def wait_for(self, expression, timeout, what):
        deadline = time.time() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.time() > deadline:
                raise AssertionError("%s: not true after %ss: %s\n%s"
                                     % (what, timeout, expression, self.problems()))
            self.browser.pump(0.3)

    def screenshot(self, path):
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def problems(self):
        """JS exceptions, console errors and failed requests (HTTP >= 400 or network errors)."""
        out = []
        urls = {ev["params"]["requestId"]: ev["params"]["request"]["url"]
                for ev in self.browser.events if ev["method"] == "Network.requestWillBeSent"}
        for ev in self.browser.events:
            if ev.get("sessionId") != self.session:
                continue
            m, p = ev["method"], ev.get("params", {})
            url = urls.get(p.get("requestId")) or p.get("entry", {}).get("url") or ""
            # resources off the stack (graphite-web's ace editor asks fonts.googleapis.com
            # for a font): the tests run without the internet
            if url and not url.startswith(self.origin) and not url.startswith(("data:", "about:")):
                self.external.add(url)
                continue
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("exception: %s %s" % (d.get("text"), d.get("exception", {}).get("description", "")))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.%s: %s" % (p["type"], [a.get("value", a.get("description"))
                                                           for a in p.get("args", [])]))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append("log: %s %s" % (p["entry"].get("text"), p["entry"].get("url", "")))
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                out.append("request failed: %s %s" % (p.get("errorText"), url))
            elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
                out.append("HTTP %d: %s" % (p["response"]["status"], p["response"]["url"]))
        return out

    def requests(self):
        return [ev["params"]["response"]["url"] for ev in self.browser.events
                if ev.get("sessionId") == self.session and ev["method"] == "Network.responseReceived"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chromium():
    binary = find_chromium()
    if not binary:
        pytest.skip("no chromium binary found (%s; or set CHROMIUM): tools/sysdeps.sh installs "
                    "Debian's chromium" % ", ".join(CHROMIUM_NAMES))
    return binary


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = DemoStack(tmp_path_factory.mktemp("demo-browser"), interval=0)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def triangle(stack):
    """A metric shaped as a triangle over [start, end], stored and readable through /render."""
    now = int(time.time())
    end = now - now % 60 - 60  # minute-aligned: the composer's absolute times are HH:MM_YYYYMMDD
    start = end - WINDOW
    name = "e2e.browser.triangle%d" % os.getpid()
    half = POINTS // 2
    points = [(start + STEP * i, 100.0 * (i if i <= half else POINTS - i) / half)
              for i in range(POINTS + 1)]
    stack.send_lines(["%s %r %d" % (name, v, t) for t, v in points])

    def stored():
        out = stack.get_json("/render", params={"target": name, "from": start - STEP,
                                                "until": end, "format": "json"})
        return out and sum(v is not None for v, _ in out[0]["datapoints"]) == len(points)

    poll(stored, 60, what="%s stored" % name)
    return name, start, end


@pytest.fixture
def browser(chromium, tmp_path):
    b = Browser(chromium, tmp_path / "profile", tmp_path / "chromium.log")
    try:
        b.call("Browser.getVersion", timeout=60)
        yield b
    finally:
        b.close()


@pytest.fixture
def shots(tmp_path, request):
    """Where screenshots go; copied to $TISMET_SCREENSHOT_DIR when set."""
    d = tmp_path / "shots"
    d.mkdir()
    yield d
    keep = os.environ.get("TISMET_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        for f in d.iterdir():
            shutil.copy(f, os.path.join(keep, "%s-%s" % (request.node.name, f.name)))


# ----------------------------------------------------------------------------- image checks


def is_line(px):
    r, g, b = px[:3]
    return r > 180 and g < 90 and b < 90


def check_triangle(img, box, what):
    """The red line inside box (left, top, right, bottom) draws the triangle."""
    img = img.convert("RGB")
    left, top, right, bottom = box
    px = img.load()
    cols = {}
    for x in range(left, right):
        ys = [y for y in range(top, bottom) if is_line(px[x, y])]
        if ys:
            cols[x] = sum(ys) / len(ys)
    assert cols, "%s: no pixel of the line colour in %s" % (what, box)
    xs = sorted(cols)
    span = xs[-1] - xs[0]
    width = right - left
    assert span > 0.5 * width, "%s: the line spans %d of %d pixels" % (what, span, width)
    # mean height of the line in the first, middle and last tenth of its span
    def band(lo, hi):
        ys = [cols[x] for x in xs if xs[0] + lo * span <= x <= xs[0] + hi * span]
        assert ys, "%s: no line pixels in %.1f..%.1f of the span" % (what, lo, hi)
        return sum(ys) / len(ys)
    first, middle, last = band(0, 0.1), band(0.45, 0.55), band(0.9, 1)
    ys = list(cols.values())
    height = max(ys) - min(ys)
    assert height > 0.3 * (bottom - top), "%s: the line is flat (%d px high)" % (what, height)
    # image y grows downwards: the middle (value 100) is well above both ends (value ~0)
    assert middle < first - 0.6 * height and middle < last - 0.6 * height, \
        "%s: not a triangle: y first %.0f middle %.0f last %.0f" % (what, first, middle, last)
    assert abs(first - last) < 0.25 * height, (what, first, last)
    return len(cols)


IMG_RECT = """(function () {
  var img = %s;
  if (!img || !img.complete || !img.naturalWidth || img.src.indexOf(%s) < 0) return null;
  var r = img.getBoundingClientRect();
  return {src: img.src, left: r.left, top: r.top, width: r.width, height: r.height,
          natural: [img.naturalWidth, img.naturalHeight]};
})()"""


def page_graph(page, element_js, needle, shot, what):
    rect = page.wait_for(IMG_RECT % (element_js, json.dumps(needle)), 60, what)
    page.browser.pump(1.0)  # late errors, the layout settling
    rect = page.evaluate(IMG_RECT % (element_js, json.dumps(needle)))
    page.screenshot(str(shot))
    img = Image.open(str(shot))
    box = (int(rect["left"]) + 1, int(rect["top"]) + 1,
           int(rect["left"] + rect["width"]) - 1, int(rect["top"] + rect["height"]) - 1)
    box = (max(box[0], 0), max(box[1], 0), min(box[2], img.width), min(box[3], img.height))
    assert box[2] - box[0] > 200 and box[3] - box[1] > 150, "graph too small on screen: %s" % rect
    return img, box, rect


# ----------------------------------------------------------------------------- tests


def test_render_png(stack, triangle, tmp_path):
    name, start, end = triangle
    params = dict(GRAPH, target=name, width="800", height="500", **{"from": start, "until": end})
    status, headers, body = stack.get("/render", params=params)
    assert status == 200 and headers["Content-Type"] == "image/png", (status, body[:300])
    (tmp_path / "render.png").write_bytes(body)
    img = Image.open(io.BytesIO(body))
    assert img.size == (800, 500)
    check_triangle(img, (0, 0, 800, 500), "/render PNG")


def test_composer_shows_graph(stack, triangle, browser, shots):
    name, start, end = triangle
    # graphite's absolute time format (the demo's graphite-web runs in UTC, so does chromium)
    frm, until = (time.strftime("%H:%M_%Y%m%d", time.gmtime(t)) for t in (start, end))
    params = dict(GRAPH, target=name, **{"from": frm, "until": until})
    url = stack.web[0] + "/composer/?" + urllib.parse.urlencode(params)
    page = browser.new_page()
    page.navigate(url)
    page.wait_for("document.readyState == 'complete'", 60, "composer loaded")
    img, box, rect = page_graph(page, "document.getElementById('image-viewer')",
                                urllib.parse.quote(name), shots / "composer.png", "composer graph")
    src = urllib.parse.parse_qs(urllib.parse.urlsplit(rect["src"]).query)
    assert src["target"] == [name] and src["colorList"] == ["ff0000"], rect["src"]
    assert src["from"] == [frm] and src["until"] == [until], rect["src"]
    check_triangle(img, box, "composer screenshot %s" % (shots / "composer.png"))
    assert "Invalid" not in page.evaluate("document.body.innerText")
    assert page.evaluate("typeof Composer") == "object"
    problems = page.problems()
    assert not problems, "composer page: %s" % problems
    assert any("/render" in u and "target=" in u for u in page.requests())


def test_dashboard_shows_graph(stack, triangle, browser, shots):
    """A dashboard saved as the dashboard UI saves one (Dashboard > Save), opened by name."""
    name, start, end = triangle
    dash = "tismet-e2e-%d" % os.getpid()
    params = dict(GRAPH, target=[name], **{"from": str(start), "until": str(end)})
    size = {"width": 800, "height": 450}
    # what the UI saves (Ext.encode(getState()), which drops the undefined record id):
    # graphs are [target string, params, url]
    state = {
        "name": dash,
        "timeConfig": {"type": "relative", "relativeStartQuantity": "10",
                       "relativeStartUnits": "minutes", "relativeUntilQuantity": "",
                       "relativeUntilUnits": "now", "startDate": "2020-01-01T00:00:00.000Z",
                       "startTime": "9:00 AM", "endDate": "2020-01-01T00:00:00.000Z",
                       "endTime": "5:00 PM"},
        "refreshConfig": {"enabled": False, "interval": 60000},
        "graphSize": size,
        "defaultGraphParams": dict(size, **{"from": "-10minutes", "until": "now"}),
        "graphs": [[urllib.parse.urlencode({"target": name}), params,
                    "/render?" + urllib.parse.urlencode(dict(params, **size), doseq=True)]],
    }
    data = urllib.parse.urlencode({"state": json.dumps(state)}).encode()
    with urllib.request.urlopen(stack.web[0] + "/dashboard/save/" + dash, data, timeout=30) as r:
        assert json.load(r) == {"success": True}
    page = browser.new_page()
    page.navigate(stack.web[0] + "/dashboard/" + dash)
    page.wait_for("document.readyState == 'complete'", 60, "dashboard loaded")
    # the dashboard preloads a graph and swaps it in when loaded: wait for the final one
    img, box, rect = page_graph(
        page, "document.querySelector('img.graph-img:not(.graph-img-loading)')",
        urllib.parse.quote(name), shots / "dashboard.png", "dashboard graph")
    src = urllib.parse.parse_qs(urllib.parse.urlsplit(rect["src"]).query)
    assert src["target"] == [name] and src["colorList"] == ["ff0000"], rect["src"]
    assert src["from"] == [str(start)] and src["until"] == [str(end)], rect["src"]
    assert rect["natural"] == [800, 450], rect
    assert page.evaluate("dashboardName") == dash
    assert not page.evaluate("Ext.Msg.isVisible()"), \
        "dashboard shows a message box: %s" % page.evaluate("document.querySelector('.x-window-dlg') && document.querySelector('.x-window-dlg').innerText")
    check_triangle(img, box, "dashboard screenshot %s" % (shots / "dashboard.png"))
    problems = page.problems()
    assert not problems, "dashboard page: %s" % problems
