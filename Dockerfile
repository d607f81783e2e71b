# Control-plane image: ucloud-api and ucloud-scheduler (compute hosts run ucloud-vm under systemd).
FROM python:3.11-slim-bookworm
WORKDIR /opt/ucloud
RUN pip install --no-cache-dir pipenv
COPY Pipfile Pipfile.lock pyproject.toml README.md ./
COPY ucloud_common ./ucloud_common
COPY ucloud_api ./ucloud_api
COPY ucloud_scheduler ./ucloud_scheduler
COPY ucloud_vm ./ucloud_vm
COPY config ./config
RUN PIPENV_VENV_IN_PROJECT=1 pipenv sync
ENV PATH=/opt/ucloud/.venv/bin:$PATH
USER nobody
