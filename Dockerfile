# One image for the api, worker and flower services of docker-compose.yml.
# The CUDA runtime base carries the GPU user-space libraries the worker needs; the api and
# flower run the same image without a GPU.
ARG BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cds_hooks ./cds_hooks
COPY fhir_adapter ./fhir_adapter
COPY deidentify ./deidentify
COPY model ./model
RUN pip install ".[model]" flower
RUN useradd --system --uid 10001 triage && mkdir -p /var/lib/triage && chown triage /var/lib/triage
USER triage
EXPOSE 8080 5555
CMD ["triage", "serve", "--host", "0.0.0.0", "--port", "8080"]
