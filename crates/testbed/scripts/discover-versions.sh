#!/usr/bin/env bash
# Prints, per Kubernetes minor, the newest patch release the Go module proxy serves completely:
# the k8s.io/kubernetes module zip, its checksum-database entry, and the k8s.io/api staging
# module at the matching v0.X.Y. (A proxy may list a version yet refuse its zip, or lack its
# checksum entry; `go build` fails on either.) Use the output to update DEFAULT_KUBERNETES in
# crates/testbed/src/cache.rs or REFIT_TESTBED_VERSIONS.
#
#   discover-versions.sh 1.35 1.36 1.37
set -euo pipefail
proxy=$(go env GOPROXY | cut -d, -f1)
ok() { curl -fsS -o /dev/null -r 0-0 "$1" 2>/dev/null; }
for minor in "$@"; do
  newest=""
  miss=0
  for patch in $(seq 0 40); do
    v="$minor.$patch"
    if ok "$proxy/k8s.io/kubernetes/@v/v$v.info"; then
      miss=0
      if ok "$proxy/k8s.io/kubernetes/@v/v$v.zip" \
        && ok "$proxy/sumdb/sum.golang.org/lookup/k8s.io/kubernetes@v$v" \
        && ok "$proxy/k8s.io/api/@v/v0.${v#1.}.zip"; then
        newest=$v
      else
        echo "  $v: listed but incomplete on the proxy (zip or checksum entry missing)" >&2
      fi
    else
      miss=$((miss + 1))
      [ "$miss" -ge 3 ] && break
    fi
  done
  echo "$minor ${newest:-none}"
done
