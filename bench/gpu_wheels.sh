#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels the GPU device machine lacks, for CPython 3.12 on manylinux x86_64,
# so that a device session can carry them (the device has no network; the carried tree + .whl must stay under
# 64 MiB). Run it HERE, from the repository root, before a device session; bench/gpu_check.sh installs them there.
#
#   polars 1.31.0: one 35 MB abi3 wheel (polars 2.x is polars + a 54 MB polars-runtime-32: too big to carry).
#   imagecodecs:   the abi3 wheel (~26 MB) trimmed to its Python files, its core extension modules, the codecs the
#                  project, its tests and tifffile use (png, deflate, zlib, zstd, jpeg8) and the bundled shared
#                  libraries those link against (DT_NEEDED, followed transitively); RECORD is rewritten to match.
#   .whl/data/aitslab-bioimaging1/val/images: the lab's 10 validation frames (5 MB), when ../shared has them: the
#                  ../shared beside the checkout does not travel, and the CUDA tests and the parity check need them.
#
#   bash bench/gpu_wheels.sh
set -euo pipefail

POLARS=${POLARS:-polars==1.31.0}
IMAGECODECS=${IMAGECODECS:-imagecodecs==2026.3.6}  # abi3 from cp311: installs on 3.11 (here) and 3.12 (device)
KEEP_MODULES="_shared _shared_cython _imcd _png _deflate _zlib _zstd _jpeg8"

cd "$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
[ -f pyproject.toml ] || { echo "gpu_wheels: run it from the nucleiscreen repository" >&2; exit 1; }
command -v readelf >/dev/null || { echo "gpu_wheels: needs readelf (binutils) to follow the shared libraries" >&2; exit 1; }
rm -rf .whl
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$POLARS" "$IMAGECODECS"

python3 - "$KEEP_MODULES" .whl/imagecodecs-*.whl <<'EOF'
import base64, hashlib, os, re, subprocess, sys, tempfile, zipfile

keep_modules, wheel = sys.argv[1].split(), sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    data = {n: z.read(n) for n in names}
    modes = {i.filename: i.external_attr for i in z.infolist()}
libs = {n.rsplit("/", 1)[1]: n for n in names if n.startswith("imagecodecs.libs/")}


def needed(blob: bytes) -> list[str]:
    with tempfile.NamedTemporaryFile(suffix=".so") as f:
        f.write(blob)
        f.flush()
        out = subprocess.run(["readelf", "-d", f.name], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


keep = {n for n in names if n.startswith("imagecodecs/") and not n.endswith(".so")}  # Python files, licenses
keep |= {n for n in names if ".dist-info/" in n and not n.endswith("/RECORD")}
todo = [n for n in names if re.fullmatch(r"imagecodecs/(\w+)\.(abi3|cpython[^/]*)\.so", n)
        and n.split("/")[1].split(".")[0] in keep_modules]
missing = set(keep_modules) - {n.split("/")[1].split(".")[0] for n in todo}
if missing:
    sys.exit(f"gpu_wheels: {wheel} lacks the extension modules {sorted(missing)}")
while todo:  # the kept modules and, transitively, the bundled libraries they link against
    n = todo.pop()
    if n in keep:
        continue
    keep.add(n)
    todo += [libs[lib] for lib in needed(data[n]) if lib in libs]
record = next(n for n in names if n.endswith(".dist-info/RECORD"))
rows = []
for n in sorted(keep):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data[n]).digest()).rstrip(b"=").decode()
    rows.append(f"{n},sha256={digest},{len(data[n])}")
rows.append(f"{record},,")
before = os.path.getsize(wheel)
tmp = wheel + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for n in sorted(keep):
        info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr, info.compress_type = modes[n], zipfile.ZIP_DEFLATED
        z.writestr(info, data[n])
    z.writestr(zipfile.ZipInfo(record, date_time=(2020, 1, 1, 0, 0, 0)), "\n".join(rows) + "\n",
               zipfile.ZIP_DEFLATED)
os.replace(tmp, wheel)
kept_so = sorted(n.split("/", 1)[1] for n in keep if n.endswith(".so") or ".so." in n)
print(f"gpu_wheels: {os.path.basename(wheel)} trimmed {before / 2**20:.1f} -> {os.path.getsize(wheel) / 2**20:.1f} MiB, "
      f"keeping {', '.join(kept_so)}")
EOF

DATA=../shared/data/aitslab-bioimaging1
if [ -d "$DATA/val/images" ]; then
    mkdir -p .whl/data/aitslab-bioimaging1/val
    cp -r "$DATA/val/images" .whl/data/aitslab-bioimaging1/val/
else
    echo "gpu_wheels: no $DATA/val/images here: the device will skip the parity check and the CUDA tests that need it"
fi

ls -l .whl
echo "gpu_wheels: .whl holds $(du -sb .whl | tail -1 | cut -f1 | awk '{printf "%.1f MiB", $1 / 1048576}') \
(the device's carry limit is 64 MiB with the working tree: $(git ls-files -z -co --exclude-standard \
| du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1 | awk '{printf "%.1f MiB", $1 / 1048576}') of tree here)"
