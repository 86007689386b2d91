# The bundle image: ansible-playbook with the pinned ansible (and the collections it bundles), pgops, and
# this repository's playbooks, roles and inventory/example, so a team can converge hosts from a container.
# Everything Python comes from `make wheel` (dist/bundle, dist/pgops); no package index is used.
# A team's inventory and SSH key are mounted at run time, never built in (.dockerignore keeps them out):
#
#   make wheel
#   podman build --build-arg BASE_IMAGE=localhost/pgops-debian:12 -t pgops-bundle .   # or: docker build -t pgops-bundle .
#   podman run --rm -it -v ~/.ssh:/run/pgops/ssh:ro -v "$PWD/inventory/production:/opt/pgops-bundle/inventory/production:ro" \
#     pgops-bundle -i inventory/production playbooks/site.yml
#   podman run --rm -it pgops-bundle bash
#
# The container starts as root only to copy the mounted SSH directory to user ansible (uid 1000) with the
# right owner and modes (compose/bundle/entrypoint.sh), then runs as ansible. docs/compose.md has the details.
# The role postgresql_backup finds its wheelhouse at /opt/pgops-bundle/dist/pgops ({{ playbook_dir }}/../dist/pgops).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv openssh-client ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --home-dir /home/ansible --shell /bin/bash --uid 1000 --user-group ansible

# ansible first: its layer survives a new pgops wheel.
COPY dist/bundle/ /tmp/wheels/
RUN python3 -m venv /opt/ansible \
    && /opt/ansible/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
         -c /tmp/wheels/constraints.txt ansible ansible-core \
    && rm -rf /tmp/wheels \
    && /opt/ansible/bin/ansible --version >/dev/null
COPY dist/pgops/ /opt/pgops-bundle/dist/pgops/
RUN /opt/ansible/bin/pip install --no-cache-dir --no-index --find-links /opt/pgops-bundle/dist/pgops \
         -c /opt/pgops-bundle/dist/pgops/constraints.txt pgops \
    && /opt/ansible/bin/pip check \
    && /opt/ansible/bin/pgops --version
ENV PATH=/opt/ansible/bin:$PATH

WORKDIR /opt/pgops-bundle
COPY ansible.cfg ./
COPY playbooks/ playbooks/
COPY roles/ roles/
# The alert rules and exporter queries roles/prometheus and roles/postgres_exporter install (role_path/../../monitoring).
COPY monitoring/ monitoring/
# Only the example: .dockerignore admits nothing else of inventory/ (and no vault file, key or .env anywhere).
COPY inventory/example/ inventory/example/
COPY compose/bundle/entrypoint.sh /usr/local/bin/pgops-bundle-entrypoint

# No USER: the entrypoint starts as root to copy the mounted SSH key for user ansible, then runs as ansible.
# The base image may set another stop signal (a systemd image: SIGRTMIN+3).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/pgops-bundle-entrypoint"]
CMD ["--help"]
