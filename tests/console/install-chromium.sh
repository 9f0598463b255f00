#!/bin/sh
# Debian's Chromium for the console's browser tests (tests/console): installed with apt-get when it is
# missing and this runs as root; otherwise those tests skip and say why.
for browser in chromium chromium-browser google-chrome google-chrome-stable; do
	command -v "$browser" >/dev/null 2>&1 && exit 0
done
[ -n "$ZOWY_CHROMIUM" ] && [ -x "$ZOWY_CHROMIUM" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
	echo "chromium not found: the console's browser tests will be skipped (install it: sudo apt-get install -y chromium)"
	exit 0
fi
echo "installing Debian's chromium for the console's browser tests"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null; }; then
	echo "apt-get install chromium failed: the console's browser tests will be skipped"
fi
exit 0
