#!/bin/sh
# postrm (deb) / %postun (rpm) of tunnel-agent. purge (deb) deletes the
# sectun-agent user; certificates you put in /etc/sectun stay yours.
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
	if getent passwd sectun-agent >/dev/null; then userdel sectun-agent >/dev/null 2>&1 || true; fi
	if getent group sectun-agent >/dev/null; then groupdel sectun-agent >/dev/null 2>&1 || true; fi
	rmdir /etc/sectun 2>/dev/null || true
fi
exit 0
