# poi on a CPU base image, the same install steps as a fresh machine.
#   docker build -t poi .                      the full image (scripts/setup.sh: torch, training, the tests)
#   docker build --build-arg SETUP=scripts/setup_deploy.sh -t poi:deploy .
#                                              the deploy runtime only (`pip install poi-fer`: ONNX Runtime, no torch)
#   docker run --rm -v "$PWD:/data" poi predict photo.jpg
#   docker run --rm -p 8000:8000 poi:deploy serve --host 0.0.0.0     (the HTTP API, docs/serve.md)
# For a CUDA base, e.g.: docker build --build-arg BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 -t poi:cuda .
# and run with --gpus all (the PyPI torch wheels carry their own CUDA libraries).
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG SETUP=scripts/setup.sh
RUN command -v python3 >/dev/null && python3 -m venv --help >/dev/null 2>&1 \
    || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv && rm -rf /var/lib/apt/lists/*)
WORKDIR /opt/poi
COPY . .
RUN VENV=/opt/venv bash ${SETUP} && rm -rf /root/.cache/pip
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /data
EXPOSE 8000
ENTRYPOINT ["poi"]
CMD ["--help"]
