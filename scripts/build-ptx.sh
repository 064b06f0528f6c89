#!/usr/bin/env bash
# Compiles the engine's OpenCL C GPU kernels to PTX with clang's NVPTX target, for NVIDIA cards
# that have the CUDA driver but no OpenCL driver. The PTX is committed (engine/src/device/gpu/
# kernels/*.ptx) and embedded in the binary, so neither builds nor CI need clang; rerun this
# script after editing a .cl file. Needs Debian's `clang` (14 or newer).
#
# sm_80 is the oldest target the kernels are tuned for; the CUDA driver compiles PTX for the card
# it loads on (an sm_90 H100/H200 included), so one PTX file serves every card from Ampere on.
set -euo pipefail
cd "$(dirname "$0")/../engine/src/device/gpu/kernels"
clang="${CLANG:-clang}"
for src in *.cl; do
    out="${src%.cl}.ptx"
    # OpenCL C 2.0 for the generic address space that __nvvm_atom_add_gen_i takes.
    "$clang" -x cl -cl-std=CL2.0 -target nvptx64-nvidia-cuda -march="${PTX_ARCH:-sm_80}" -O3 \
        -DRIGFLEET_PTX -Wall -Werror -S -o "$out.tmp" "$src"
    mv "$out.tmp" "$out"
    echo "wrote $(pwd)/$out"
done
