# The image of every pod in kuberay.yaml: Ray's GPU image at the Ray version pyproject.toml pins, plus
# this project installed from the build context, so pyproject.toml stays the only place versions are pinned.
#   docker build -t YOUR-REGISTRY/clmr-ray:$(git rev-parse --short HEAD) . && docker push YOUR-REGISTRY/clmr-ray:...
FROM rayproject/ray:2.60.0-py311-gpu
COPY --chown=ray:users . /home/ray/clmr-ray
RUN pip install --no-cache-dir /home/ray/clmr-ray
WORKDIR /home/ray/clmr-ray
