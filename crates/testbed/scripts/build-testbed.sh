#!/usr/bin/env bash
# Builds one testbed component from the Go module proxy into the testbed cache.
#
#   build-testbed.sh k8s  1.36.5  OUTDIR   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#   build-testbed.sh k8s-node 1.36.5 OUTDIR  kubeadm and kubelet (the node side: kubeadm-shaped sandboxes)
#   build-testbed.sh etcd 3.6.16  OUTDIR   etcd (server) and etcdctl
#   build-testbed.sh kwok 0.8.0   OUTDIR   kwok + kwok.yaml (KwokConfiguration + the stages kwok needs)
#   build-testbed.sh prometheus 3.16.0 OUTDIR  prometheus (server; no service discovery, no web UI)
#
# Called by `crates/testbed` (src/build.rs), which decides what is missing or corrupt, writes the
# manifest after this script succeeds, and prints progress. This script only builds: it writes
# into OUTDIR.tmp and renames it to OUTDIR at the end, so a killed build never leaves a
# half-populated OUTDIR behind. GOCACHE and GOMODCACHE are the user's, so rebuilds are warm.
set -euo pipefail
# Version checks read a program's whole output first (`grep -q PAT <<<"$(prog --version)"`):
# piped, grep -q exits at its first match and a program still writing gets SIGPIPE, which
# pipefail turns into a failed build (it failed a cold etcd build this way).

kind=${1:?usage: build-testbed.sh k8s|k8s-node|etcd|kwok|prometheus VERSION OUTDIR}
ver=${2:?missing VERSION}
out=${3:?missing OUTDIR}
ver=${ver#v}

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
work="${out}.work"
tmp="${out}.tmp"
rm -rf "$tmp"
mkdir -p "$work" "$tmp"
cd "$work"

step() { printf '[build %s %s] %s\n' "$kind" "$ver" "$*" >&2; }

# The k8s.io/kubernetes module at v$ver with every staging repo replaced, in the current
# directory, and the version ldflags in $x. Shared by `k8s` and `k8s-node` so both kinds
# resolve the same modules (the Go build cache then serves one from the other) and report the
# same version strings.
k8s_module() {
  minor=$(cut -d. -f2 <<<"$ver")
  staging="0.${ver#1.}"
  rm -f go.mod go.sum
  go mod init testbed.local/k8s-build >/dev/null 2>&1
  step "downloading k8s.io/kubernetes v$ver go.mod"
  kmod=$(go mod download -json "k8s.io/kubernetes@v$ver" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -s "$kmod" ] || { echo "cannot download k8s.io/kubernetes@v$ver from the Go module proxy" >&2; exit 1; }
  # One replace per staging repo, generated from the release's own go.mod (an extra line is
  # harmless, a missing one is fatal).
  n=0
  for m in $(sed -n 's#^[[:space:]]*\(k8s.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$kmod"); do
    go mod edit -replace="$m=$m@v$staging"
    n=$((n + 1))
  done
  [ "$n" -gt 20 ] || { echo "found only $n staging repos in k8s.io/kubernetes@v$ver go.mod" >&2; exit 1; }
  gd=$(sed -n 's/^godebug default=\(.*\)/\1/p' "$kmod")
  [ -n "$gd" ] && go mod edit -godebug=default="$gd"
  step "$n staging repos replaced at v$staging; resolving modules"
  go get "k8s.io/kubernetes@v$ver" >/dev/null 2>&1 || go get "k8s.io/kubernetes@v$ver"
  x=""
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $p.gitVersion=v$ver -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    x+=" -X $p.gitTreeState=clean -X $p.gitCommit=0000000000000000000000000000000000000000"
    x+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
}

case "$kind" in
k8s)
  k8s_module
  step "compiling kube-apiserver kube-controller-manager kube-scheduler kubectl (cold: many minutes)"
  go build -trimpath -ldflags "-s -w$x" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  grep -qx "Kubernetes v$ver" <<<"$("$tmp/kube-apiserver" --version)" \
    || { echo "kube-apiserver --version does not report v$ver" >&2; exit 1; }
  ;;
k8s-node)
  k8s_module
  step "compiling kubeadm kubelet (warm after k8s of the same release: mostly linking)"
  go build -trimpath -ldflags "-s -w$x" -o "$tmp/" k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet
  [ "$("$tmp/kubeadm" version -o short)" = "v$ver" ] \
    || { echo "kubeadm version -o short does not report v$ver" >&2; exit 1; }
  grep -qx "Kubernetes v$ver" <<<"$("$tmp/kubelet" --version)" \
    || { echo "kubelet --version does not report v$ver" >&2; exit 1; }
  ;;
etcd)
  rm -f go.mod go.sum
  go mod init testbed.local/etcd-build >/dev/null 2>&1
  step "resolving go.etcd.io/etcd/server/v3@v$ver"
  go get "go.etcd.io/etcd/server/v3@v$ver" "go.etcd.io/etcd/etcdctl/v3@v$ver" >/dev/null 2>&1 \
    || go get "go.etcd.io/etcd/server/v3@v$ver" "go.etcd.io/etcd/etcdctl/v3@v$ver"
  step "compiling etcd and etcdctl"
  go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
  go build -trimpath -ldflags "-s -w" -o "$tmp/etcdctl" go.etcd.io/etcd/etcdctl/v3
  grep -q "etcd Version: $ver" <<<"$("$tmp/etcd" --version)" \
    || { echo "etcd --version does not report $ver" >&2; exit 1; }
  ;;
kwok)
  rm -f go.mod go.sum
  go mod init testbed.local/kwok-build >/dev/null 2>&1
  step "resolving sigs.k8s.io/kwok@v$ver"
  go get "sigs.k8s.io/kwok@v$ver" >/dev/null 2>&1 || go get "sigs.k8s.io/kwok@v$ver"
  step "compiling kwok"
  go build -trimpath -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=v$ver" -o "$tmp/kwok" sigs.k8s.io/kwok/cmd/kwok
  # Since v0.8.0 kwok has no built-in stages: assemble the ones kwokctl uses from the module.
  src=$(go list -m -f '{{.Dir}}' "sigs.k8s.io/kwok")
  st="$src/kustomize/stage"
  {
    printf 'apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n'
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      [ -f "$st/$f" ] || { echo "kwok stage $f missing from sigs.k8s.io/kwok@v$ver" >&2; exit 1; }
      printf -- '---\n'
      cat "$st/$f"
    done
  } >"$tmp/kwok.yaml"
  ;;
prometheus)
  # Prometheus publishes its Go module as v0.MMM.P for release M.MM.P (3.16.0 -> v0.316.0;
  # 2.x releases as v0.MM.P). Health gates need only the server and its query API: the
  # `remove_all_sd` tag leaves out every cloud service discovery (static targets only), which
  # more than halves the dependency graph, and without `builtinassets` the web UI is not
  # embedded (the API still answers).
  major=$(cut -d. -f1 <<<"$ver")
  minor=$(cut -d. -f2 <<<"$ver")
  patch=$(cut -d. -f3 <<<"$ver")
  if [ "$major" -ge 3 ]; then mver="v0.$((major * 100 + minor)).$patch"; else mver="v0.$minor.$patch"; fi
  rm -f go.mod go.sum
  go mod init testbed.local/prometheus-build >/dev/null 2>&1
  step "resolving github.com/prometheus/prometheus@$mver"
  go get "github.com/prometheus/prometheus@$mver" >/dev/null 2>&1 || go get "github.com/prometheus/prometheus@$mver"
  step "compiling prometheus (cold: many minutes)"
  go build -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=$ver -X github.com/prometheus/common/version.Branch=HEAD -X github.com/prometheus/common/version.Revision=0000000" \
    -o "$tmp/prometheus" github.com/prometheus/prometheus/cmd/prometheus
  grep -q "prometheus, version $ver " <<<"$("$tmp/prometheus" --version 2>&1)" \
    || { echo "prometheus --version does not report $ver" >&2; exit 1; }
  ;;
*)
  echo "unknown component kind '$kind' (expected k8s, k8s-node, etcd, kwok or prometheus)" >&2
  exit 2
  ;;
esac

rm -rf "$out"
mv "$tmp" "$out"
step "done: $(ls "$out" | tr '\n' ' ')"
