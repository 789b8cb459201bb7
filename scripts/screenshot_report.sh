#!/usr/bin/env bash
# Render an oodscope HTML report (Report.to_html) to a PNG with headless Chromium, to check its layout
# without a desktop browser.
#
# Usage:
#   scripts/screenshot_report.sh REPORT.html [OUT.png] [WIDTHxHEIGHT]
#
#   REPORT.html   the report file (any path; it is opened as file:///absolute/path)
#   OUT.png       the screenshot to write (default: REPORT.png next to the report)
#   WIDTHxHEIGHT  window size in pixels (default 1400x3000); the page is cut off below HEIGHT
#
# Needs Chromium: on Debian/Ubuntu `apt-get install -y chromium` (the binary may also be called
# chromium-browser or google-chrome; set CHROMIUM=/path/to/binary to choose). The browser runs with a
# throw-away profile and with networking features off: a self-contained report needs no network.
#
# Example:
#   python -c "from oodscope.bench import evaluate; ..."   # report.to_html('report.html')
#   scripts/screenshot_report.sh report.html report.png 1400x3000
set -euo pipefail

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit $(( $# < 1 ? 2 : 0 ))
fi

report="$1"
if [[ ! -f "$report" ]]; then
    echo "No such report file: $report" >&2
    exit 2
fi
report="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
out="${2:-${report%.*}.png}"
size="${3:-1400x3000}"
if [[ ! "$size" =~ ^[0-9]+x[0-9]+$ ]]; then
    echo "The size must be WIDTHxHEIGHT, e.g. 1400x3000; got $size" >&2
    exit 2
fi
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"

browser="${CHROMIUM:-}"
if [[ -z "$browser" ]]; then
    for candidate in chromium chromium-browser google-chrome google-chrome-stable; do
        if command -v "$candidate" >/dev/null 2>&1; then
            browser="$candidate"
            break
        fi
    done
fi
if [[ -z "$browser" ]]; then
    echo "Chromium not found: install it (apt-get install -y chromium) or set CHROMIUM=/path/to/chromium" >&2
    exit 3
fi

profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT

"$browser" \
    --headless \
    --no-sandbox \
    --disable-gpu \
    --disable-quic \
    --no-first-run \
    --disable-background-networking \
    --disable-component-update \
    --disable-sync \
    --hide-scrollbars \
    --user-data-dir="$profile" \
    --window-size="${size/x/,}" \
    --screenshot="$out" \
    "file://$report" >/dev/null 2>&1 || true

if [[ ! -s "$out" ]]; then
    echo "Chromium wrote no screenshot to $out" >&2
    exit 1
fi
echo "$out"
