#!/bin/sh
# The bundle image's entrypoint (Dockerfile). The container starts as root only for this:
# - The SSH directory mounted read-only at /run/pgops/ssh (your ~/.ssh, or any directory with the deploy key,
#   known_hosts and config) is copied to /home/ansible/.ssh, owned by user ansible, mode 0600. The mounted
#   key keeps its own owner and mode (typically your uid and 0600, which uid 1000 could not read), so this
#   works under podman (rootful and rootless) and Docker without --user or --userns flags.
# - Then it becomes user ansible (uid 1000) and runs the command: `ansible-playbook ARGS`, or ARGS itself
#   when the first one is a command (ansible, ansible-inventory, ansible-vault, pgops, bash, ...).
set -eu
src=/run/pgops/ssh
dest=/home/ansible/.ssh

copy_ssh() {
  [ -d "$src" ] || return 0
  mkdir -p "$dest"
  # -L: a mounted ~/.ssh may hold symlinks; sockets and other special files are not copied.
  if ! cp -RL "$src/." "$dest/" 2>/tmp/pgops-bundle-cp.err; then
    echo "pgops-bundle: cannot copy the SSH directory mounted at $src as uid $(id -u): $(head -n 1 /tmp/pgops-bundle-cp.err)" >&2
    echo "pgops-bundle: run the image without --user (it starts as root only to copy the key for user ansible)" >&2
    exit 2
  fi
  chmod -R go-rwx "$dest"
}

if [ "$(id -u)" = 0 ]; then
  copy_ssh
  if [ -d "$dest" ]; then
    chown -R ansible:ansible "$dest"
  fi
  export HOME=/home/ansible USER=ansible LOGNAME=ansible
  set -- setpriv --reuid=ansible --regid=ansible --init-groups -- "$0" "$@"
  exec "$@"
fi

# As user ansible (or whatever --user gave).
if [ ! -d "$dest" ] || [ -z "$(ls -A "$dest" 2>/dev/null)" ]; then
  copy_ssh
fi
case "${1:-}" in
  "" | -* | */* | *.yml | *.yaml) exec ansible-playbook "$@" ;;
esac
if command -v "$1" >/dev/null 2>&1; then
  exec "$@"
fi
exec ansible-playbook "$@"
