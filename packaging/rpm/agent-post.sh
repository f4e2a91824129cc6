# %post of spillway-agent ($1: 1 install, 2 upgrade). The user and state
# directories; the service starts only when its config passes check-config
# (as installed it names no broker). Same policy as packaging/deb/postinst.
systemd-sysusers spillway.conf || useradd --system --user-group --home-dir /nonexistent --shell /usr/sbin/nologin spillway || :
systemd-tmpfiles --create spillway-agent.conf || :
if [ "$1" -eq 1 ]; then chown root:spillway /etc/spillway/agent.toml; fi
systemctl daemon-reload >/dev/null 2>&1 || :
# As the unit will run it: none of this shell's environment.
if env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/bin/spillway-agent --config /etc/spillway/agent.toml check-config >/dev/null 2>&1; then
    if [ "$1" -eq 1 ]; then systemctl enable --now spillway-agent.service || :; else systemctl try-restart spillway-agent.service || :; fi
else
    echo "spillway-agent: not started: /etc/spillway/agent.toml is not complete (no broker yet)."
    echo "  Edit it, then: systemctl enable --now spillway-agent"
fi
