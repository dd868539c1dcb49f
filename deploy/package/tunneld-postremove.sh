#!/bin/sh
# postrm (deb: $1 = remove|purge|upgrade...) / %postun (rpm: $1 = 0 on erase).
# purge (deb) deletes the state (database, TLS material, API keys) in
# /var/lib/tunneld and the tunneld user; rpm's erase keeps them, as RPM
# packages do (delete /var/lib/tunneld and `userdel tunneld` by hand).
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
	rm -rf /var/lib/tunneld
	if getent passwd tunneld >/dev/null; then userdel tunneld >/dev/null 2>&1 || true; fi
	if getent group tunneld >/dev/null; then groupdel tunneld >/dev/null 2>&1 || true; fi
	rmdir /etc/sectun 2>/dev/null || true
fi
exit 0
