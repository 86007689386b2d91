#!/bin/sh
# Run one of inventory/example/README.md's commands as a team's shell runs it: from the repository root, with
# the repository's ansible.cfg and none of Molecule's ANSIBLE_* settings. Added only for the throwaway hosts:
# the scenario's SSH key (a team uses its own key or ssh-agent) and no known_hosts entries.
#   as-a-team.sh VENV_BIN ansible-playbook -i INVENTORY playbooks/site.yml --vault-password-file FILE
set -eu
bin=$1
shift
cd "$MOLECULE_PROJECT_DIRECTORY"
exec env -i HOME="$HOME" LANG=C.UTF-8 LC_ALL=C.UTF-8 PATH="$bin:/usr/local/bin:/usr/bin:/bin" \
    ANSIBLE_PRIVATE_KEY_FILE="$MOLECULE_EPHEMERAL_DIRECTORY/id_ed25519" \
    ANSIBLE_SSH_COMMON_ARGS="-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no" \
    ANSIBLE_FORCE_COLOR=false \
    "$@"
