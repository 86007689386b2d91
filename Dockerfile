# The bundle image: ansible-playbook with the pinned ansible (and the collections it bundles), pgops, and
# this repository's playbooks, roles and inventory, so a team can converge hosts from a container.
# Everything Python comes from `make wheel` (dist/bundle, dist/pgops); no package index is used.
#
#   make wheel
#   docker build -t pgops-bundle .        # here: podman build --build-arg BASE_IMAGE=localhost/pgops-debian:12 ...
#   docker run --rm -it -v ~/.ssh:/home/ansible/.ssh:ro pgops-bundle playbooks/site.yml -i inventory/...
#   docker run --rm -it --entrypoint bash pgops-bundle
#
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
COPY inventory/ inventory/

USER ansible
# The base image may set another stop signal (a systemd image: SIGRTMIN+3).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "ansible-playbook"]
CMD ["--help"]
