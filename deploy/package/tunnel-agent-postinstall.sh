#!/bin/sh
# postinst (deb: $1 = configure) / %post (rpm: $1 = 1 or 2) of tunnel-agent.
# Creates the sectun-agent system user. Starts nothing: fill in
# /etc/sectun/agent.json, then systemctl enable --now tunnel-agent.
set -e
case "$1" in configure|1|2) ;; *) exit 0 ;; esac
if ! getent passwd sectun-agent >/dev/null; then
	if command -v systemd-sysusers >/dev/null 2>&1; then
		systemd-sysusers /usr/lib/sysusers.d/tunnel-agent.conf
	else
		useradd --system --user-group --home-dir / --no-create-home \
			--shell /usr/sbin/nologin --comment "sectun tunnel-agent" sectun-agent
	fi
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null 2>&1 || true
	if [ "$1" = configure ] && [ -n "$2" ] || [ "$1" = 2 ]; then
		systemctl try-restart tunnel-agent.service >/dev/null 2>&1 || true
	fi
fi
exit 0
