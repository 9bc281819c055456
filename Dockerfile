# CPU image of the factory; the entrypoint is the `factory` command.
#   docker build -t factory .
#   docker run --rm -v /path/to/flowers12:/data/flowers12 -v $PWD/out:/out \
#       factory build recipes/flowers12_cpu.yaml --set data.root=/data/flowers12 --out /out/flowers12_cpu
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 FACTORY_CACHE=/app/.factory-cache
WORKDIR /app
COPY pyproject.toml README.md ./
COPY factory ./factory
# CPU wheels of the pinned torch/torchvision (torch==2.15.0 matches 2.15.0+cpu): a far smaller image
RUN pip install --quiet --extra-index-url https://download.pytorch.org/whl/cpu ".[build]"
COPY recipes ./recipes
# the Tiny ImageNet checkpoints recipes/flowers12_cpu.yaml starts from (teacher and baseline)
COPY exports/pretrained ./exports/pretrained
ENTRYPOINT ["factory"]
CMD ["--help"]
