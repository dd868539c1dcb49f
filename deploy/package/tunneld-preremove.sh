#!/bin/sh
# prerm (deb: $1 = remove|upgrade) / %preun (rpm: $1 = 0 on erase) of tunneld.
set -e
case "$1" in remove|0) ;; *) exit 0 ;; esac
if [ -d /run/systemd/system ]; then
	systemctl disable --now tunneld.service >/dev/null 2>&1 || true
fi
exit 0
