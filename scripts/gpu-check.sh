#!/usr/bin/env bash
# Checks and measures the GPUs of this machine with a rigfleet-agent binary built elsewhere
# (a bare machine where nothing can be installed): GPU results against the CPU path, SHA-256d
# rates per GPU and per route (OpenCL driver, PTX through the CUDA driver), NVML readings.
# Read-only: no clock, power limit, fan or other GPU setting is changed. Runs in under five
# minutes.
#
#   scripts/gpu-check.sh [path/to/rigfleet-agent] [seconds per GPU]
#
# Where the OpenCL ICD loader is missing, a libOpenCL.so.1 placed next to the binary (lib/) is
# used; where NVIDIA's OpenCL driver exists but no ICD file names it (containers often mount the
# driver's libraries without /etc/OpenCL/vendors), a vendor file pointing at it is written into a
# temporary folder for this process only.
set -uo pipefail
bin="${1:-target/release/rigfleet-agent}"
seconds="${2:-10}"
here="$(cd "$(dirname "$bin")" && pwd)"

echo "== machine"
date -u
uname -a
nproc
grep -m1 'model name' /proc/cpuinfo || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,pci.bus_id,driver_version,temperature.gpu,power.draw,power.limit,clocks.sm,clocks.max.sm,clocks.mem --format=csv || echo "nvidia-smi: not found"

echo "== driver libraries"
ldconfig -p 2>/dev/null | grep -iE 'libOpenCL|libcuda\.|libnvidia-opencl|libnvidia-ml' || echo "(none in ldconfig)"
ls /etc/OpenCL/vendors 2>/dev/null || echo "(no /etc/OpenCL/vendors)"

if ! ldconfig -p 2>/dev/null | grep -q 'libOpenCL.so.1' && [ -e "$here/lib/libOpenCL.so.1" ]; then
    echo "using the carried OpenCL ICD loader $here/lib/libOpenCL.so.1"
    export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
nv_ocl=""
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda/compat; do
    if [ -e "$d/libnvidia-opencl.so.1" ]; then nv_ocl="$d/libnvidia-opencl.so.1"; break; fi
done
if [ -n "$nv_ocl" ]; then
    echo "NVIDIA OpenCL driver: $nv_ocl"
    if ! grep -qs libnvidia-opencl /etc/OpenCL/vendors/*.icd; then
        vendors="$(mktemp -d)"
        echo "$nv_ocl" > "$vendors/nvidia.icd"
        export OCL_ICD_VENDORS="$vendors"
        echo "no ICD file names it: OCL_ICD_VENDORS=$vendors for this run"
    fi
else
    echo "NVIDIA OpenCL driver: not found (the CUDA route with PTX will be used)"
fi

echo "== rigfleet-agent gpu-check"
timeout 270 "$bin" gpu-check --seconds "$seconds"
rc=$?
echo "gpu-check exit code: $rc"
exit $rc
