#!/usr/bin/env bash
# The system packages Tismet's tests and demo need beyond Python 3.11 and a
# compiler, installed with apt when missing (as root), else listed.
#   libcairo2          graphite-web imports cairocffi for its renderer
#   fonts-dejavu-core  a font for the renderer's and the browser's text
#   chromium           headless browser of tests/test_browser.py (graphite-web's UI);
#                      only with --with-browser (make test), not for make demo
#   clang, libclang-rt-dev  libFuzzer for tools/fuzz.py run (make fuzz, tox -e fuzz);
#                      only with --with-fuzz (the default tests replay the corpus with gcc)
set -euo pipefail
PACKAGES=(libcairo2 fonts-dejavu-core)
if [ "${1:-}" = "--with-browser" ]; then
    PACKAGES+=(chromium)
fi
if [ "${1:-}" = "--with-fuzz" ]; then
    PACKAGES=(clang libclang-rt-dev)
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "warning: missing system packages: ${missing[*]} (install them with apt-get as root)" >&2
fi
