#!/bin/sh
# Install monitord as a service from a checkout or an unpacked sdist, on a systemd
# host where the Debian package is not an option (on Debian: build and install the
# .deb, docs/INSTALL.md). Run as root.
#
#   scripts/install.sh install   [--prefix DIR] [--root DESTDIR] [--monitord PATH]
#                                [--pip-args "ARGS"] [--audisp]
#   scripts/install.sh uninstall [--prefix DIR] [--root DESTDIR] [--purge]
#
# Everything but configuration goes under PREFIX (default /usr/local), in the places
# systemd reads for software the administrator installed; /etc stays the admin's:
#   PREFIX/lib/monitord/venv                     a virtualenv with monitord (pip install .)
#   PREFIX/bin/monitord                          a link to it (or to --monitord PATH, no venv)
#   PREFIX/lib/systemd/system/monitord.service   the unit (not enabled: docs/INSTALL.md)
#   PREFIX/lib/sysusers.d/monitord.conf          the `monitord` user
#   PREFIX/lib/tmpfiles.d/monitord.conf          /var/lib/monitord, /etc/monitord
#   PREFIX/share/monitord/                       Prometheus rules, Grafana dashboard
#   PREFIX/share/man/man1/monitord.1             the man page
#   /etc/audit/plugins.d/monitord.conf           the auditd plugin, `active = no` unless --audisp
#                                                (/etc/audisp/plugins.d with auditd 2.x)
#   /etc/monitord/monitord.toml                  the commented default config, never overwritten
#   /var/lib/monitord                            the state directory
# uninstall removes them, except the config and the state unless --purge. The
# `monitord` user stays (sysusers.d never removes users: files may still be owned).
# Files an earlier version of this script put under /etc/systemd/system, /etc/sysusers.d,
# /etc/tmpfiles.d and /opt/monitord are removed by both actions (they would override these).
#
# --root DESTDIR stages everything under DESTDIR (packaging, tests) and runs no
# systemctl/systemd-sysusers; without it the script applies the user, the
# directories and `systemctl daemon-reload` on this host.
set -eu
umask 022

here=$(cd "$(dirname "$0")/.." && pwd)
prog=$(basename "$0")

die() { echo "$prog: $*" >&2; exit 2; }
say() { echo "$prog: $*"; }

usage() {
    sed -n '6,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

action=${1:-}
[ $# -gt 0 ] && shift
case "$action" in install|uninstall) ;; -h|--help|"") usage ;; *) die "unknown action '$action' (install or uninstall)" ;; esac

prefix=/usr/local
root=""
monitord_bin=""
pip_args=""
audisp=no
purge=no
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; root=$2; shift 2 ;;
        --monitord) [ $# -ge 2 ] || die "--monitord needs a path"; monitord_bin=$2; shift 2 ;;
        --pip-args) [ $# -ge 2 ] || die "--pip-args needs a value"; pip_args=$2; shift 2 ;;
        --audisp) audisp=yes; shift ;;
        --purge) purge=yes; shift ;;
        -h|--help) usage ;;
        *) die "unknown option '$1'" ;;
    esac
done
case "$prefix" in /*) ;; *) die "--prefix must be absolute: $prefix" ;; esac
prefix=${prefix%/}
[ -n "$prefix" ] || prefix=/usr
if [ -n "$root" ]; then
    [ -d "$root" ] || die "--root $root: no such directory"
    root=$(cd "$root" && pwd)
    [ "$root" = / ] && root=""
fi
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (or stage with --root DIR)"
fi
live() { [ -z "$root" ]; }
systemd_running() { live && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

venv=$prefix/lib/monitord/venv
stamp=$prefix/lib/monitord/.installed-by-monitord
link=$prefix/bin/monitord
unit=$prefix/lib/systemd/system/monitord.service
sysusers=$prefix/lib/sysusers.d/monitord.conf
tmpfiles=$prefix/lib/tmpfiles.d/monitord.conf
share=$prefix/share/monitord
manpage=$prefix/share/man/man1/monitord.1
config_dir=/etc/monitord
config=$config_dir/monitord.toml
state_dir=/var/lib/monitord

# auditd 3.x/4.x read /etc/audit/plugins.d; 2.x ran audispd with /etc/audisp/plugins.d.
plugin_dir=/etc/audit/plugins.d
if [ ! -d "$root/etc/audit/plugins.d" ] && [ -d "$root/etc/audisp/plugins.d" ]; then
    plugin_dir=/etc/audisp/plugins.d
fi
plugin=$plugin_dir/monitord.conf

# put SRC DEST MODE [SED-EXPR]: copy a file into the root, optionally edited.
put() {
    mkdir -p "$root$(dirname "$2")"
    tmp="$root$2.tmp.$$"
    if [ $# -ge 4 ]; then sed -e "$4" "$1" >"$tmp"; else cat "$1" >"$tmp"; fi
    chmod "$3" "$tmp"
    mv -f "$tmp" "$root$2"
    say "installed $2"
}

remove() {
    if [ -e "$root$1" ] || [ -L "$root$1" ]; then rm -f "$root$1"; say "removed $1"; fi
}

# remove_ours PATH TEXT: remove PATH if it holds TEXT (a file this script once wrote).
remove_ours() {
    if [ -f "$root$1" ] && grep -qF "$2" "$root$1"; then remove "$1"; fi
}

# The layout of earlier versions of this script: under /etc, which overrides /usr/local.
remove_old_layout() {
    remove_ours /etc/systemd/system/monitord.service "Installed by scripts/install.sh"
    remove_ours /etc/sysusers.d/monitord.conf "installed as /etc/sysusers.d/monitord.conf"
    remove_ours /etc/tmpfiles.d/monitord.conf "installed as /etc/tmpfiles.d/monitord.conf"
    if [ -f "$root/opt/monitord/.installed-by-monitord" ]; then
        if [ -L "$root/usr/local/bin/monitord" ] &&
            [ "$(readlink "$root/usr/local/bin/monitord")" = /opt/monitord/venv/bin/monitord ]; then
            remove /usr/local/bin/monitord
        fi
        rm -rf "$root/opt/monitord/venv" "$root/opt/monitord/.installed-by-monitord"
        rmdir "$root/opt/monitord" 2>/dev/null || true
        say "removed /opt/monitord/venv"
    fi
}

make_venv() {
    command -v python3 >/dev/null 2>&1 || die "python3 is needed (apt-get install python3 python3-venv)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "python 3.11 or newer is needed"
    mkdir -p "$root$(dirname "$venv")"
    say "creating $venv"
    python3 -m venv "$root$venv" || die "python3 -m venv failed (apt-get install python3-venv)"
    # shellcheck disable=SC2086 # pip_args is a list of words on purpose
    "$root$venv/bin/python" -m pip install -q --disable-pip-version-check $pip_args "$here" \
        || die "pip install failed (building systemd-python needs: apt-get install gcc pkg-config libsystemd-dev python3-dev)"
    if [ -n "$root" ]; then
        # Scripts name their interpreter by the path they were built at: make it the final one.
        for f in "$root$venv"/bin/*; do
            [ -f "$f" ] && [ ! -L "$f" ] || continue
            if head -c 2 "$f" | grep -q '^#!'; then
                sed -i "1s#^\#!$root$venv/#\#!$venv/#" "$f"
            fi
            if grep -q "$root$venv" "$f" 2>/dev/null; then sed -i "s#$root$venv#$venv#g" "$f"; fi
        done
    fi
    touch "$root$stamp"
}

do_install() {
    if [ -n "$monitord_bin" ]; then
        [ -x "$monitord_bin" ] || die "--monitord $monitord_bin: not an executable"
        case "$monitord_bin" in /*) ;; *) monitord_bin=$(cd "$(dirname "$monitord_bin")" && pwd)/$(basename "$monitord_bin") ;; esac
        target=$monitord_bin
        python=python3
    else
        make_venv
        target=$venv/bin/monitord
        python=$root$venv/bin/python
    fi
    remove_old_layout
    mkdir -p "$root$(dirname "$link")"
    ln -sfn "$target" "$root$link"
    say "linked $link -> $target"

    put "$here/deploy/systemd/monitord.service" "$unit" 0644 \
        "s#^ExecStart=/usr/bin/monitord #ExecStart=$link #"
    put "$here/deploy/systemd/monitord.sysusers" "$sysusers" 0644
    put "$here/deploy/systemd/monitord.tmpfiles" "$tmpfiles" 0644
    for f in monitord.rules.yml monitord.rules.test.yml prometheus.yml; do
        put "$here/deploy/prometheus/$f" "$share/prometheus/$f" 0644
    done
    put "$here/contrib/grafana/monitord.json" "$share/grafana/monitord.json" 0644
    mkdir -p "$root$(dirname "$manpage")"
    "$python" "$here/scripts/manpage.py" >"$root$manpage.tmp.$$" || die "cannot write the man page"
    mv -f "$root$manpage.tmp.$$" "$root$manpage"
    say "installed $manpage"
    # auditd insists on 0640 or stricter for plugin confs.
    active=no
    [ "$audisp" = yes ] && active=yes
    put "$here/deploy/audit/plugins.d/monitord.conf" "$plugin" 0640 \
        "s#^active = .*#active = $active#; s#^path = .*#path = $link#"

    mkdir -p "$root$config_dir"
    if [ -e "$root$config" ]; then
        put "$here/deploy/monitord.toml" "$config.new" 0644
        say "kept the existing $config; the shipped default is $config.new"
    else
        put "$here/deploy/monitord.toml" "$config" 0644
    fi
    mkdir -p "$root$state_dir"
    chmod 0750 "$root$state_dir"

    if live; then
        if command -v systemd-sysusers >/dev/null 2>&1; then systemd-sysusers "$sysusers"; fi
        if command -v systemd-tmpfiles >/dev/null 2>&1; then systemd-tmpfiles --create "$tmpfiles"; fi
        if id monitord >/dev/null 2>&1; then chown monitord:monitord "$state_dir"; fi
        if systemd_running; then systemctl daemon-reload; fi
        say "done. Next: monitord check-config $config && systemctl enable --now monitord"
        if [ "$audisp" = yes ]; then
            say "the auditd plugin is active: reload auditd (service auditd reload) and do not also enable monitord.service"
        fi
    fi
}

do_uninstall() {
    if systemd_running; then systemctl disable --now monitord.service 2>/dev/null || true; fi
    remove "$unit"
    remove "$sysusers"
    remove "$tmpfiles"
    remove "$manpage"
    rm -rf "$root$share"
    for dir in /etc/audit/plugins.d /etc/audisp/plugins.d; do
        if [ -f "$root$dir/monitord.conf" ] && grep -q '^active = yes' "$root$dir/monitord.conf"; then
            live && say "the auditd plugin was active: reload auditd (service auditd reload)"
        fi
        remove "$dir/monitord.conf"
    done
    # Only a link: a real file there was not put there by this script.
    if [ -L "$root$link" ]; then remove "$link"; fi
    if [ -f "$root$stamp" ]; then
        rm -rf "$root$venv"
        rm -f "$root$stamp"
        rmdir "$root$(dirname "$venv")" 2>/dev/null || true
        say "removed $venv"
    fi
    remove_old_layout
    remove "$config.new"
    if [ "$purge" = yes ]; then
        rm -rf "$root$config_dir" "$root$state_dir"
        say "removed $config_dir and $state_dir"
    else
        [ -d "$root$config_dir" ] && say "kept $config_dir (--purge removes it)"
        [ -d "$root$state_dir" ] && say "kept $state_dir (--purge removes it)"
    fi
    if systemd_running; then systemctl daemon-reload; fi
    return 0
}

"do_$action"
