#!/usr/bin/env bash
# Makes a Docker engine answer on this machine for the docker backend's tests,
# idempotently: installs Debian's engine (docker.io, crun) when missing, and starts
# dockerd when no engine answers, with crun registered as an extra runtime.
#
# The daemon we start keeps its images in a data root that persists between runs
# (so test images are built once), logs to a file beside it, and leaves the host's
# network alone: no bridge, no iptables rules, no IP forwarding (the proxy runs
# every container with network "none").
#
# cgroups: this script selects the "cgroupfs" driver. The "systemd" driver asks
# systemd over D-Bus to create a scope per container, which needs systemd running
# as PID 1; on machines where it is not (containers, micro-VMs, cgroup v1 with only
# a "name=systemd" hierarchy mounted) the daemon would fail every start. cgroupfs
# writes the container groups directly into the mounted v1 (or v2) hierarchies,
# which works wherever the hierarchies are writable by root.
#
# Hybrid cgroups (v1 controllers plus a cgroup2 "unified" mount): crun refuses to
# run when a controller is left on the cgroup2 side ("cgroups in hybrid mode not
# supported"). A kernel controller that no v1 hierarchy claims (often hugetlb) is
# on that side, so this script mounts each such controller as a v1 hierarchy of
# its own, the layout systemd itself uses in hybrid mode. runc works either way.
#
# gVisor: register runsc the same way as crun, e.g. add
#   "runsc": {"path": "/usr/local/bin/runsc"}
# under "runtimes" below (or run dockerd with --add-runtime runsc=/path/to/runsc);
# a server whose spec names runtime "runsc" then runs under it.
#
# The daemon listens on the default socket (unix:///var/run/docker.sock). When
# DOCKER_HOST names another engine, the script only checks that it answers.
#
# Environment: MCP_SANDBOX_PROXY_TEST_CACHE (default ~/.cache/mcp-sandbox-proxy-tests)
# holds the daemon's state in its "docker" folder. DOCKER_UP_TIMEOUT_S bounds the
# wait for the engine (default 90 s).
set -euo pipefail

cache=${MCP_SANDBOX_PROXY_TEST_CACHE:-$HOME/.cache/mcp-sandbox-proxy-tests}
state="$cache/docker"
timeout_s=${DOCKER_UP_TIMEOUT_S:-90}
crun_path=/usr/bin/crun

say() { printf '[docker-up] %s\n' "$*" >&2; }

engine_answers() {
  timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

install_engine() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  [ -x "$crun_path" ] || missing+=(crun)
  [ "${#missing[@]}" -eq 0 ] && return 0

  say "installing Debian packages: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

write_daemon_config() {
  mkdir -p "$state/data-root"
  cat >"$state/daemon.json" <<EOF
{
  "data-root": "$state/data-root",
  "exec-opts": ["native.cgroupdriver=cgroupfs"],
  "storage-driver": "overlay2",
  "runtimes": {"crun": {"path": "$crun_path"}},
  "bridge": "none",
  "iptables": false,
  "ip-forward": false,
  "ip-masq": false,
  "userland-proxy": false,
  "log-level": "warn"
}
EOF
}

start_daemon() {
  say "starting dockerd (state in $state, log in $state/dockerd.log)"
  setsid nohup dockerd --config-file "$state/daemon.json" \
    >>"$state/dockerd.log" 2>&1 </dev/null 9>&- &
  local pid=$! deadline=$((SECONDS + timeout_s))
  until engine_answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      say "dockerd exited during start; the end of its log:"
      tail -n 20 "$state/dockerd.log" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "dockerd did not answer within ${timeout_s}s; the end of its log:"
      tail -n 20 "$state/dockerd.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

# Moves controllers left on the cgroup2 side of a hybrid host to v1 hierarchies.
claim_hybrid_controllers() {
  local unified=/sys/fs/cgroup/unified controller
  [ -r "$unified/cgroup.controllers" ] || return 0
  for controller in $(cat "$unified/cgroup.controllers"); do
    say "mounting the $controller controller as a v1 hierarchy (crun needs it)"
    mkdir -p "/sys/fs/cgroup/$controller"
    mount -t cgroup -o "$controller" cgroup "/sys/fs/cgroup/$controller" \
      || say "warning: could not mount $controller; crun will refuse to start"
  done
}

warn_without_crun() {
  local runtimes
  runtimes=$(docker info --format '{{range $name, $_ := .Runtimes}}{{$name}} {{end}}')
  case " $runtimes " in
    *" crun "*) ;;
    *) say "warning: the running engine has no 'crun' runtime (it has: $runtimes);" \
         "the runtime tests will fail. Restart it with --add-runtime crun=$crun_path" ;;
  esac
}

install_engine
mkdir -p "$state"
exec 9>"$state/up.lock"
flock -w "$timeout_s" 9
claim_hybrid_controllers

if engine_answers; then
  say "engine already answering: $(docker version --format '{{.Server.Version}}')"
elif [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != unix:///var/run/docker.sock ]; then
  say "no engine answers at DOCKER_HOST=$DOCKER_HOST, and a local dockerd would not"
  say "serve that address: start that engine, or unset DOCKER_HOST"
  exit 1
else
  write_daemon_config
  start_daemon
  say "engine ready: $(docker version --format '{{.Server.Version}}')"
fi
warn_without_crun
