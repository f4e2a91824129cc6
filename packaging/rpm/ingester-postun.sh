# %postun of spillway-ingester ($1: 0 removal, 1 upgrade). RPM has no purge: an
# edited config is saved as .rpmsave and the agent's spool is kept.
systemctl daemon-reload >/dev/null 2>&1 || :
