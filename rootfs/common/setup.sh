#!/bin/sh
# Runs inside the new root once its packages are in (every image). Chromium and, later, the CLIs
# run as this unprivileged user; the agent alone is root.
set -eu
useradd --create-home --uid 1000 --user-group --shell /bin/sh user
# Nothing in the image starts services of its own: the agent is the init.
rm -f /etc/machine-id && : > /etc/machine-id
