#!/usr/bin/env bash
# The reference stack of the benchmarks: Debian's Postfix + Dovecot, configured like a chatmail
# relay (reference §1, §3.2, §5) as far as a benchmark needs, run as private instances on their
# own loopback address with their own config, queue, state and mail directories under DIR.
#
#   scripts/bench/reference-stack.sh start DIR IP [CERT KEY]   # prints the cold-start seconds
#   scripts/bench/reference-stack.sh stop DIR
#   scripts/bench/reference-stack.sh pids DIR                  # every process of the stack
#
# Accounts: virtual users bnch00000..bnch11999@bench.test with the password benchpass12345
# (SHA512-CRYPT in a passwd-file), pre-created: chatmail creates accounts on first login through
# doveauth, which is not reproduced. Mail is kept as Maildir owned by `nobody`.
#
# What is not reproduced (see BENCHMARKS.md): filtermail (no encryption gate, no rate limit),
# OpenDKIM, the header-cleanup reinject, doveauth/metadata/lastlogin dict services, the zlib and
# quota plugins, and the chatmail Dovecot patch (stock Dovecot keeps its 0.5 s IDLE delay).
#
# Installing: the packages are installed only if missing, without configuring or starting the
# system's own instances (debconf "No configuration", a policy-rc.d that refuses service starts).
set -euo pipefail

DOMAIN=bench.test
PASSWORD=benchpass12345
NUSERS=${BENCH_REF_USERS:-12000}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_packages() {
    local need=()
    [ -x /usr/sbin/postfix ] || need+=(postfix)
    [ -x /usr/sbin/dovecot ] || need+=(dovecot-imapd)
    [ -x /usr/lib/dovecot/lmtp ] || need+=(dovecot-lmtpd)
    [ "${#need[@]}" -gt 0 ] || return 0
    echo "installing ${need[*]}" >&2
    echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
    local added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    local rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2 || {
        as_root apt-get update -q >&2 || true
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2 || rc=$?
    }
    [ "$added_policy" = 1 ] && as_root rm -f /usr/sbin/policy-rc.d
    return "$rc"
}

# Waits until every IP:PORT accepts a connection; fails after 30 s.
wait_listeners() {
    local deadline=$((SECONDS + 30)) a
    for a in "$@"; do
        until (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null; do
            [ "$SECONDS" -lt "$deadline" ] || { echo "$a does not accept" >&2; return 1; }
            sleep 0.005
        done
    done
}

write_config() {
    local dir=$1 ip=$2 cert=$3 key=$4
    mkdir -p "$dir"/{postfix,pf-queue,pf-data,dovecot,run,state,mail}
    chmod 755 "$dir" "$dir"/run "$dir"/mail
    chown nobody:nogroup "$dir/mail"
    chown postfix "$dir/pf-data"
    cp "$cert" "$dir/cert.pem"
    cp "$key" "$dir/key.pem"
    chmod 644 "$dir/cert.pem"
    chmod 600 "$dir/key.pem"
    local hash
    hash=$(openssl passwd -6 -salt benchsalt "$PASSWORD")
    local uid gid
    uid=$(id -u nobody)
    gid=$(getent group nogroup | cut -d: -f3)
    if [ ! -s "$dir/dovecot/users" ]; then
        awk -v n="$NUSERS" -v d="$DOMAIN" -v h="$hash" -v u="$uid" -v g="$gid" -v m="$dir/mail" \
            'BEGIN { for (i = 0; i < n; i++) { a = sprintf("bnch%05d@%s", i, d);
                     printf "%s:{SHA512-CRYPT}%s:%s:%s::%s/%s::\n", a, h, u, g, m, a } }' \
            >"$dir/dovecot/users"
    fi
    cat >"$dir/dovecot/dovecot.conf" <<CONF
# Private benchmark instance (scripts/bench/reference-stack.sh); chatmail-like where it matters.
instance_name = bench-dovecot
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
listen = $ip
protocols = imap lmtp
ssl = required
ssl_cert = <$dir/cert.pem
ssl_key = <$dir/key.pem
ssl_min_protocol = TLSv1.3
auth_mechanisms = plain
disable_plaintext_auth = yes
first_valid_uid = 1
mail_location = maildir:$dir/mail/%u
mail_cache_max_size = 500K
default_client_limit = 20000
imap_hibernate_timeout = 30s
passdb {
  driver = passwd-file
  args = $dir/dovecot/users
}
userdb {
  driver = passwd-file
  args = $dir/dovecot/users
}
service imap-login {
  inet_listener imap {
    address = $ip
    port = 143
  }
  inet_listener imaps {
    address = $ip
    port = 993
    ssl = yes
  }
  # chatmail: "high-performance" login processes
  service_count = 0
  process_min_avail = 10
  vsz_limit = 1G
  process_limit = 100
}
service imap {
  process_limit = 20000
}
service lmtp {
  unix_listener lmtp-postfix {
    mode = 0666
  }
}
service auth {
  unix_listener auth-postfix {
    mode = 0666
  }
}
CONF
    cat >"$dir/postfix/main.cf" <<CONF
compatibility_level = 3.6
queue_directory = $dir/pf-queue
data_directory = $dir/pf-data
mail_owner = postfix
setgid_group = postdrop
myhostname = $DOMAIN
mydomain = $DOMAIN
myorigin = $DOMAIN
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
relay_domains =
virtual_mailbox_domains = $DOMAIN
virtual_transport = lmtp:unix:$dir/run/lmtp-postfix
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtpd_tls_security_level = may
smtpd_tls_chain_files = $dir/key.pem, $dir/cert.pem
smtpd_tls_protocols = >=TLSv1.3
smtpd_tls_mandatory_protocols = >=TLSv1.3
smtpd_sasl_type = dovecot
smtpd_sasl_path = $dir/run/auth-postfix
smtpd_tls_auth_only = yes
smtpd_sender_login_maps = regexp:$dir/postfix/login_map
smtpd_reject_unlisted_recipient = no
maillog_file = $dir/postfix.log
maillog_file_prefixes = $dir
smtputf8_enable = no
biff = no
append_dot_mydomain = no
shlib_directory = /usr/lib/postfix
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
command_directory = /usr/sbin
manpage_directory = /usr/share/man
message_size_limit = 31457280
CONF
    printf '/^(.*)$/ ${1}\n' >"$dir/postfix/login_map"
    local mua="-o smtpd_sasl_auth_enable=yes -o smtpd_client_restrictions=permit_sasl_authenticated,reject -o smtpd_sender_restrictions=reject_sender_login_mismatch,permit_sasl_authenticated,reject -o smtpd_relay_restrictions=permit_sasl_authenticated,reject"
    cat >"$dir/postfix/master.cf" <<CONF
$ip:25 inet n - n - - smtpd
$ip:587 inet n - n - - smtpd -o smtpd_tls_security_level=encrypt $mua
$ip:465 inet n - n - - smtpd -o smtpd_tls_wrappermode=yes $mua
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
CONF
}

# The master pids and all their descendants.
stack_pids() {
    local dir=$1 roots=() p
    for f in "$dir/run/master.pid" "$dir/pf-queue/pid/master.pid"; do
        [ -s "$f" ] && roots+=("$(tr -d ' \n' <"$f")")
    done
    [ "${#roots[@]}" -gt 0 ] || return 0
    ps -e -o pid=,ppid= | awk -v r="${roots[*]}" '
        { parent[$1] = $2 }
        END { n = split(r, a, " "); for (i = 1; i <= n; i++) keep[a[i]] = 1
              changed = 1
              while (changed) { changed = 0
                  for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
              for (p in keep) if (p in parent) print p }'
}

cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|pids DIR [IP [CERT KEY]]" >&2; exit 2; }
case "$cmd" in
start)
    ip=${3:?IP}
    cert=${4:-}
    key=${5:-}
    ensure_packages
    dir=$(realpath -m "$dir")
    if [ -z "$cert" ]; then
        cert=$dir/gen-cert.pem key=$dir/gen-key.pem
        mkdir -p "$dir"
        [ -s "$cert" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$key" -out "$cert" -days 36500 -subj "/CN=$DOMAIN" \
            -addext "subjectAltName=DNS:$DOMAIN,IP:$ip" 2>/dev/null
    fi
    write_config "$dir" "$ip" "$cert" "$key"
    t0=$(date +%s.%N)
    dovecot -c "$dir/dovecot/dovecot.conf"
    MAIL_CONFIG=$dir/postfix postfix -c "$dir/postfix" start 2>>"$dir/postfix-start.log" \
        || { cat "$dir/postfix-start.log" >&2; exit 1; }
    wait_listeners "$ip:25" "$ip:465" "$ip:587" "$ip:143" "$ip:993"
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l | awk '{ printf "%.3f\n", $1 }'
    ;;
stop)
    dir=$(realpath -m "$dir")
    MAIL_CONFIG=$dir/postfix postfix -c "$dir/postfix" stop >/dev/null 2>&1 || true
    [ -f "$dir/dovecot/dovecot.conf" ] && doveadm -c "$dir/dovecot/dovecot.conf" stop >/dev/null 2>&1 || true
    for _ in $(seq 50); do
        [ -n "$(stack_pids "$dir")" ] || break
        sleep 0.1
    done
    for p in $(stack_pids "$dir"); do kill -9 "$p" 2>/dev/null || true; done
    ;;
pids)
    stack_pids "$(realpath -m "$dir")"
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
