#!/bin/sh
# postinst (deb: $1 = configure) / %post (rpm: $1 = 1 or 2) of tunneld.
# Creates the system user and /var/lib/tunneld. Starts nothing: the
# service is enabled by the administrator once /etc/sectun/tunneld.conf is
# configured (systemctl enable --now tunneld).
set -e
case "$1" in configure|1|2) ;; *) exit 0 ;; esac
if ! getent passwd tunneld >/dev/null; then
	if command -v systemd-sysusers >/dev/null 2>&1; then
		systemd-sysusers /usr/lib/sysusers.d/tunneld.conf
	else
		useradd --system --user-group --home-dir /var/lib/tunneld --no-create-home \
			--shell /usr/sbin/nologin --comment "sectun tunneld" tunneld
	fi
fi
install -d -m 0750 -o tunneld -g tunneld /var/lib/tunneld
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	# An upgrade restarts a running service on the new binary.
	if [ "$1" = configure ] && [ -n "$2" ] || [ "$1" = 2 ]; then
		systemctl try-restart tunneld.service >/dev/null 2>&1 || true
	fi
fi
exit 0
