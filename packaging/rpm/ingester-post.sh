# %post of spillway-ingester ($1: 1 install, 2 upgrade). The user and state
# directories; the service starts only when its config passes check-config
# (as installed it names no broker). Same policy as packaging/deb/postinst.
systemd-sysusers spillway.conf || useradd --system --user-group --home-dir /nonexistent --shell /usr/sbin/nologin spillway || :
if [ "$1" -eq 1 ]; then chown root:spillway /etc/spillway/ingester.toml; fi
systemctl daemon-reload >/dev/null 2>&1 || :
# As the unit will run it: none of this shell's environment.
if env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/bin/spillway-ingester --config /etc/spillway/ingester.toml check-config >/dev/null 2>&1; then
    if [ "$1" -eq 1 ]; then systemctl enable --now spillway-ingester.service || :; else systemctl try-restart spillway-ingester.service || :; fi
else
    echo "spillway-ingester: not started: /etc/spillway/ingester.toml is not complete (no broker yet)."
    echo "  Edit it, then: systemctl enable --now spillway-ingester"
fi
