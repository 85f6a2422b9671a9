#!/usr/bin/env bash
# Installs (or reuses) the third-party AMQP clients the interop suite runs, and prints where
# they are as KEY=VALUE lines on stdout (progress goes to stderr). Everything is cached under
# $WARREN_INTEROP_CACHE (default $HOME/.cache/warren-interop): the Python venv, node_modules,
# the compiled Java classes and Go binary, each rebuilt only when its inputs change.
# Debian packages are installed with apt-get when missing (as root); a tool that cannot be
# installed stops the setup with the command that installs it.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
home="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
cache="${WARREN_INTEROP_CACHE:-$home/.cache/warren-interop}"
mkdir -p "$cache"
log() { echo "interop setup: $*" >&2; }
die() {
    echo "interop setup: ERROR: $*" >&2
    exit 1
}

# One setup at a time per cache (two test runs on one machine share it).
exec 9>"$cache/.lock"
flock 9

# ---- Debian packages -------------------------------------------------------------------
# command or file that proves the package is there -> package name
declare -A need=(
    [/usr/share/java/amqp-client.jar]=librabbitmq-client-java
    [/usr/share/java/slf4j-simple.jar]=libslf4j-java
    [/usr/share/gocode/src/github.com/rabbitmq/amqp091-go/channel.go]=golang-github-rabbitmq-amqp091-go-dev
    [go]=golang-go
    [javac]=default-jdk-headless
    [java]=default-jdk-headless
    [node]=nodejs
    [npm]=npm
    [amqp-publish]=amqp-tools
    [amqp-consume]=amqp-tools
    [amqp-get]=amqp-tools
    [amqp-declare-queue]=amqp-tools
    [amqp-delete-queue]=amqp-tools
    [python3]=python3
    [flock]=util-linux
)
missing=()
for probe in "${!need[@]}"; do
    if [[ $probe == /* ]]; then
        [[ -e $probe ]] && continue
    else
        command -v "$probe" >/dev/null 2>&1 && continue
    fi
    missing+=("${need[$probe]}")
done
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    install_cmd="apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "missing ${missing[*]}: install with: sudo apt-get update && sudo $install_cmd"
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! $install_cmd >&2; then
        apt-get update >&2 || die "apt-get update failed; then run: $install_cmd"
        $install_cmd >&2 || die "could not install ${missing[*]}: run: $install_cmd"
    fi
fi
# Go golang-go installs go under /usr/lib/go-1.xx with /usr/bin/go; the JDK puts javac on PATH.
for tool in go javac java node npm amqp-publish python3; do
    command -v "$tool" >/dev/null || die "$tool is still missing after installing packages"
done

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# ---- Python: pika, aio-pika, kombu, Celery in a venv -----------------------------------
venv="$cache/venv"
py_stamp="$(hash_of "$here/python/requirements.txt" <(python3 --version 2>&1))"
if [[ ! -x $venv/bin/python || "$(cat "$venv/.warren-stamp" 2>/dev/null)" != "$py_stamp" ]]; then
    log "creating the Python venv in $venv"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" >&2; then
        # Debian's python3 needs python3-venv for this.
        [[ $(id -u) -eq 0 ]] && DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >&2
        rm -rf "$venv"
        python3 -m venv "$venv" >&2 ||
            die "python3 -m venv failed: install python3-venv (apt-get install -y python3-venv)"
    fi
    "$venv/bin/pip" install --disable-pip-version-check -q -r "$here/python/requirements.txt" >&2 ||
        die "pip install failed: run $venv/bin/pip install -r $here/python/requirements.txt"
    echo "$py_stamp" >"$venv/.warren-stamp"
fi

# ---- Node: amqplib and amqp-connection-manager -----------------------------------------
node_dir="$cache/node"
node_stamp="$(hash_of "$here/node/package.json" "$here/node/package-lock.json" <(node --version))"
if [[ ! -d $node_dir/node_modules || "$(cat "$node_dir/.warren-stamp" 2>/dev/null)" != "$node_stamp" ]]; then
    log "installing amqplib and amqp-connection-manager in $node_dir"
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    cp "$here/node/package.json" "$here/node/package-lock.json" "$node_dir/"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >&2) ||
        die "npm ci failed: run (cd $node_dir && npm ci)"
    echo "$node_stamp" >"$node_dir/.warren-stamp"
fi

# ---- Java: the RabbitMQ Java client from Debian, compiled with javac -------------------
java_cp_libs="/usr/share/java/amqp-client.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-simple.jar"
java_stamp="$(hash_of "$here"/java/*.java <(javac -version 2>&1) /usr/share/java/amqp-client.jar)"
java_classes="$cache/java/$java_stamp"
if [[ ! -f $java_classes/.done ]]; then
    log "compiling the Java scenarios into $java_classes"
    rm -rf "$java_classes"
    mkdir -p "$java_classes"
    javac -Xlint:-options -d "$java_classes" -cp "$java_cp_libs" "$here"/java/*.java >&2 ||
        die "javac failed"
    touch "$java_classes/.done"
fi

# ---- Go: amqp091-go from Debian's source package, built offline in GOPATH mode ----------
go_stamp="$(hash_of "$here"/go/*.go <(go version) /usr/share/gocode/src/github.com/rabbitmq/amqp091-go/*.go)"
go_bin="$cache/go/$go_stamp/interop-go"
if [[ ! -x $go_bin ]]; then
    log "building the Go scenarios into $go_bin"
    mkdir -p "$cache/go/$go_stamp"
    (cd "$here/go" &&
        GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$cache/go/build-cache" GOFLAGS= \
            go build -o "$go_bin.tmp" . >&2) || die "go build failed"
    mv "$go_bin.tmp" "$go_bin"
fi

echo "CACHE=$cache"
echo "VENV=$venv"
echo "NODE=$(command -v node)"
echo "NODE_PATH=$node_dir/node_modules"
echo "GO_BIN=$go_bin"
echo "JAVA=$(command -v java)"
echo "JAVA_CP=$java_classes:$java_cp_libs"
