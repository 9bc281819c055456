# The factory in a container; the entrypoint is the `factory` command. It installs as README.md does
# (a venv, then `pip install ".[build]" -c constraints.txt`), on any base image that has python3 with venv.
#
#   docker build -t factory .                                     # CPU image: torch from PyTorch's CPU index
#   docker build -t factory:cuda --build-arg TORCH_INDEX= .       # CUDA image: PyPI's torch (CUDA libraries included);
#                                                                 # run it with --gpus all (NVIDIA container toolkit)
#   docker build --build-arg BASE_IMAGE=python:3.12-slim .        # another base image
#   docker run --rm -v /path/to/flowers12:/data/flowers12 -v $PWD/out:/out \
#       factory build recipes/flowers12_cpu.yaml --set data.root=/data/flowers12 --out /out/flowers12_cpu
#   docker build --target exports -o type=local,dest=ci-exports . # CI: regenerate the tiny task's models
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS factory
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# a CA bundle for pip behind a TLS-intercepting proxy (only where one is mounted into the build)
ARG PIP_CERT
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FACTORY_CACHE=/app/.factory-cache PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY factory ./factory
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --quiet ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} ".[build]" -c constraints.txt \
 && factory --help >/dev/null
COPY recipes ./recipes
# the Tiny ImageNet checkpoints recipes/flowers12_cpu.yaml starts from (teacher and baseline)
COPY exports/pretrained ./exports/pretrained
ENTRYPOINT ["factory"]
CMD ["--help"]

# Regenerates the tiny task's models inside the image (timm test models, synthetic images; no download).
# The build fails when `factory build` fails or misses the recipe's budget (its gate).
FROM factory AS regenerate
# a new value reruns this step instead of taking it from the layer cache
ARG REGENERATE=1
RUN echo "regenerate $REGENERATE" && python3 -m factory.testing /tmp/tiny \
 && HF_HUB_OFFLINE=1 factory build /tmp/tiny/tiny.yaml --device cpu --cache-dir /tmp/cache --out /out/tiny

FROM scratch AS exports
COPY --from=regenerate /out /
