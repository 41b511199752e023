# CUDA image with the package and every optional dependency (DeepSpeed, bitsandbytes, PEFT).
#   docker build -t alignment .
#   docker run --gpus all -v $PWD/outputs:/outputs alignment                 # the tiny recipe
#   docker run --gpus all --shm-size 16g -v ~/.cache/huggingface:/cache -v $PWD/outputs:/outputs alignment \
#       accelerate launch --config_file recipes/accelerate_configs/zero3.yaml scripts/train.py \
#       --config recipes/qwen2.5-0.5b/dpo.yaml --training.output_dir=/outputs/qwen2.5-0.5b-dpo
# The runtime base has no CUDA compiler. Everything here runs without one except DeepSpeed
# ops compiled on first use (the CPU Adam of zero3_offload.yaml): for those, build on the
# devel image: docker build --build-arg BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-devel .
ARG BASE_IMAGE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV HF_HOME=/cache \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
WORKDIR /workspace/alignment

# Dependencies first, so that editing the code does not reinstall them. The image's own
# torch (built for its CUDA) is pinned as a constraint: pip keeps it, and fails rather than
# replace it with another build. trl is needed at run time under DeepSpeed and FSDP (the
# frozen reference is prepared with its helpers) and is not in the `all` extra.
COPY pyproject.toml README.md ./
RUN mkdir -p alignment && touch alignment/__init__.py \
    && pip list --format=freeze | grep -iE '^(torch|torchvision|torchaudio|triton)==' > /tmp/torch-constraints.txt \
    && cat /tmp/torch-constraints.txt \
    && PIP_CONSTRAINT=/tmp/torch-constraints.txt pip install --no-cache-dir -e ".[all]" "trl==1.16.*" \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

COPY . .
# Re-register the editable install now that the real package is in place (no downloads).
RUN PIP_CONSTRAINT=/tmp/torch-constraints.txt pip install --no-cache-dir --no-deps -e . \
    && mkdir -p /cache /outputs

CMD ["accelerate", "launch", "scripts/train.py", "--config", "recipes/tiny/dpo.yaml", "--training.output_dir=/outputs/tiny-dpo"]
