# %preun of spillway-agent ($1: 0 removal, 1 upgrade): stop on removal.
if [ "$1" -eq 0 ]; then systemctl disable --now spillway-agent.service >/dev/null 2>&1 || :; fi
