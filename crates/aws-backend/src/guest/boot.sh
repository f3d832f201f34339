#!/bin/bash
# The guest's boot script: arms a power-off at the grant's deadline, fetches the grant's image
# from the content store, verifies its sha256, and only then loads and starts it.
#
# This text is the same for every grant; it is embedded in the user data byte for byte. Every
# grant-specific value comes from the vars file named on the command line, which is read as
# data (never sourced or evaluated) and checked against strict patterns before use, so no value
# can change what this script does. Any failure ends in a power-off: a machine that cannot run
# the granted image has no reason to stay up, and with InstanceInitiatedShutdownBehavior set to
# terminate, a power-off ends the instance.
#
# Usage: boot.sh start VARS_FILE          (once, from cloud-init's runcmd)
#        boot.sh arm-deadline VARS_FILE   (on every boot, from cloud-init's per-boot scripts)
#
# GRANT_GUEST_WORK_DIR, GRANT_GUEST_BACKOFF_S, GRANT_GUEST_SSH_DIR and GRANT_GUEST_CONSOLE exist
# for tests; nothing sets them in production.

set -uo pipefail
umask 077
export LC_ALL=C

readonly WORK_DIR="${GRANT_GUEST_WORK_DIR:-/var/lib/grant-guest}"
readonly BACKOFF_S="${GRANT_GUEST_BACKOFF_S:-5}"
readonly DEADLINE_UNIT="grant-guest-deadline"
readonly SSH_DIR="${GRANT_GUEST_SSH_DIR:-/etc/ssh}"
readonly CONSOLE="${GRANT_GUEST_CONSOLE:-/dev/console}"

# Patterns every value must match. They are variables so that bash's [[ =~ ]] reads them as
# regular expressions, unquoted.
readonly HEX64_RE='^[0-9a-f]{64}$'
readonly URL_RE='^https?://[][A-Za-z0-9._~:/?=&%+@,-]+$'
readonly RUNTIME_RE='^(docker|podman)$'
readonly ATTEMPTS_RE='^([1-9]|1[0-9]|20)$'
readonly UNIX_S_RE='^[0-9]{1,12}$'
readonly BACKOFF_RE='^[0-9]{1,4}$'
readonly IMAGE_REF_RE='^[A-Za-z0-9_][A-Za-z0-9._/:@-]*$'
# A user name as guest.rs accepts it (and never root, which it refuses).
readonly USER_RE='^[a-z_][a-z0-9_-]{0,31}$'
readonly HOST_KEY_RE='^ssh-ed25519 [A-Za-z0-9+/]+={0,2}( [^[:cntrl:]]*)?$'

log() {
  printf 'grant-guest: %s\n' "$*" >&2
}

# Logs why, powers the machine off and stops this script; it never returns.
power_off() {
  log "refusing: $1; powering off"
  poweroff || shutdown -P now || systemctl poweroff --force
  exit 1
}

# Reads KEY=VALUE lines from the vars file into the variables below, refusing unknown or
# repeated keys and any value outside its pattern.
GRANT_ID=""
IMAGE_SHA256=""
IMAGE_URL=""
CONTAINER_RUNTIME=""
FETCH_ATTEMPTS=""
POWEROFF_AT_UNIX_S=""
LOGIN_USER=""
read_vars() {
  local file=$1 line key value pattern
  local -A seen=()
  [[ -f $file && -r $file ]] || power_off "the vars file $(printf '%q' "$file") is missing"
  while IFS= read -r line || [[ -n $line ]]; do
    [[ -z $line ]] && continue
    [[ $line == *=* ]] || power_off "malformed line in the vars file: $(printf '%q' "$line")"
    key=${line%%=*}
    value=${line#*=}
    case $key in
      GRANT_ID | IMAGE_SHA256) pattern=$HEX64_RE ;;
      IMAGE_URL) pattern=$URL_RE ;;
      CONTAINER_RUNTIME) pattern=$RUNTIME_RE ;;
      FETCH_ATTEMPTS) pattern=$ATTEMPTS_RE ;;
      POWEROFF_AT_UNIX_S) pattern=$UNIX_S_RE ;;
      LOGIN_USER) pattern=$USER_RE ;;
      *) power_off "unknown key in the vars file: $(printf '%q' "$key")" ;;
    esac
    [[ -z ${seen[$key]:-} ]] || power_off "repeated key in the vars file: $key"
    seen[$key]=1
    [[ $value =~ $pattern ]] || power_off "bad value for $key in the vars file: $(printf '%q' "$value")"
    printf -v "$key" '%s' "$value"
  done <"$file"
  for key in GRANT_ID IMAGE_SHA256 IMAGE_URL CONTAINER_RUNTIME FETCH_ATTEMPTS POWEROFF_AT_UNIX_S LOGIN_USER; do
    [[ -n ${seen[$key]:-} ]] || power_off "the vars file lacks $key"
  done
  [[ $LOGIN_USER != root ]] || power_off "the login user is root"
  [[ $BACKOFF_S =~ $BACKOFF_RE ]] || power_off "bad GRANT_GUEST_BACKOFF_S $(printf '%q' "$BACKOFF_S")"
}

# Refuses a login user that could become root: missing (cloud-init failed), uid 0, in a group
# that gives root, with a sudo rule, or able to write root's PATH. Runs after arm_deadline, so a
# lookup hanging on a name service still ends on time.
check_login_user() {
  local uid gids names g out e
  uid=$(id -u "$LOGIN_USER") || power_off "the login user $LOGIN_USER does not exist"
  [[ $uid =~ ^[1-9][0-9]*$ ]] || power_off "the login user $LOGIN_USER has uid $uid"
  { gids=$(id -G "$LOGIN_USER") && names=$(id -nG "$LOGIN_USER"); } || power_off "id -G $LOGIN_USER failed"
  # dialout and tty may write the serial and virtual consoles, where show_host_key writes.
  for g in wheel sudo admin docker podman dialout tty "$CONTAINER_RUNTIME"; do
    [[ " $names " != *" $g "* ]] || power_off "the login user $LOGIN_USER is in group $g"
  done
  # Only sudo reads its rules (aliases, ALL, includes) as it applies them; without sudo, none can.
  if command -v sudo >/dev/null; then
    out=$(sudo -n -l -U "$LOGIN_USER" 2>&1)
    if [[ $out == *"may run the following"*:$'\n'* ]]; then
      read -r out <<<"${out#*following*:$'\n'}"
      power_off "the login user $LOGIN_USER has a sudo rule: $out"
    fi
    [[ $out == *"is not allowed to run sudo"* ]] || power_off "unreadable sudo -l -U $LOGIN_USER: ${out%%$'\n'*}"
  fi
  out=$PATH:
  while [[ -n $out ]]; do
    e=${out%%:*} out=${out#*:}
    [[ $e == /* ]] || power_off "root's PATH has the relative entry '$e'"
    check_dirs "$e"
    e=$(readlink -f -- "$e") && check_dirs "$e"
  done
  log "the login user $LOGIN_USER (uid $uid, groups $names) is unprivileged"
}

# Refuses at the first directory from $1 up to / that the login user ($uid, $gids) owns or may
# write through a bit for all or one of its groups: above an entry, one could replace the entry;
# for a missing entry, make it. Above the first, a sticky directory like /tmp is safe.
check_dirs() {
  local d=$1 first=1 o g m how
  while :; do
    if [[ -e $d ]]; then
      read -r o g m <<<"$(stat -L -c '%u %g %a' -- "$d")"
      [[ $m =~ ^[0-7]+$ ]] || power_off "cannot stat $d"
      how=""
      if ((first || !(8#$m & 8#1000))); then
        ((8#$m & 8#002)) && how="world-writable"
        ((8#$m & 8#020)) && [[ " $gids " == *" $g "* ]] && how="writable by its group $g"
      fi
      ((o != uid)) || how="owned by it"
      [[ -z $how ]] || power_off "the login user $LOGIN_USER can write $d ($how), so it controls $1 on root's PATH"
      first=0
    fi
    [[ $d != / ]] || return 0
    d=${d%/*} d=${d:-/}
  done
}

# Prints the host's ed25519 public key to the console between the lines cloud-init uses
# (guest.rs: CONSOLE_KEYS_BEGIN/END), so the backend reads it with GetConsoleOutput, a channel
# AWS authenticates, even on an AMI whose cloud-init prints no keys. Only the public half, without
# its comment. Without a well-formed key no requester could verify the host, so it powers off.
show_host_key() {
  local key="" kind body
  { IFS= read -r key || [[ -n $key ]]; } <"$SSH_DIR/ssh_host_ed25519_key.pub" ||
    power_off "no ed25519 host key in $SSH_DIR"
  [[ $key =~ $HOST_KEY_RE ]] || power_off "the ed25519 host key in $SSH_DIR is malformed"
  read -r kind body _ <<<"$key"
  key=$(printf '%s\n' "-----BEGIN SSH HOST KEY KEYS-----" "$kind $body" "-----END SSH HOST KEY KEYS-----")
  printf '%s\n' "$key" 2>/dev/null >"$CONSOLE" || printf '%s\n' "$key" >&2
  log "printed the host key to the console"
}

# Schedules the power-off at the deadline, or powers off now if it has passed. Runs before
# anything is fetched, so a hung fetch or a runaway image still ends on time.
arm_deadline() {
  local now delay
  now=$(date +%s) || power_off "cannot read the clock"
  [[ $now =~ $UNIX_S_RE ]] || power_off "the clock reads $(printf '%q' "$now")"
  delay=$((10#$POWEROFF_AT_UNIX_S - 10#$now))
  ((delay > 0)) || power_off "the deadline (unix $POWEROFF_AT_UNIX_S) has passed"
  if systemctl is-active --quiet "$DEADLINE_UNIT.timer"; then
    log "the deadline power-off is already armed"
    return 0
  fi
  if systemd-run --unit="$DEADLINE_UNIT" --on-active="${delay}s" --timer-property=AccuracySec=1s \
    systemctl poweroff; then
    log "power-off armed in ${delay}s (unix $POWEROFF_AT_UNIX_S)"
    return 0
  fi
  # Rounding down keeps the fallback from running past the deadline.
  if shutdown -P "+$((delay / 60))"; then
    log "power-off armed with shutdown in $((delay / 60)) min"
    return 0
  fi
  power_off "cannot arm the deadline power-off"
}

# Downloads the image into $WORK_DIR/image.partial, trying FETCH_ATTEMPTS times.
fetch_image() {
  local attempt=1
  mkdir -p -m 0700 "$WORK_DIR" || power_off "cannot create $WORK_DIR"
  while :; do
    rm -f "$WORK_DIR/image.partial"
    # -q: no ~/.curlrc; --globoff: brackets in the URL are literal; redirects may only lead
    # to http(s), and the hash check below makes wherever they lead harmless.
    if curl -q --fail --silent --show-error --globoff --location \
      --proto '=http,https' --proto-redir '=http,https' \
      --connect-timeout 10 --speed-limit 1024 --speed-time 60 \
      --output "$WORK_DIR/image.partial" --url "$IMAGE_URL"; then
      log "fetched the image on attempt $attempt"
      return 0
    fi
    if ((attempt >= FETCH_ATTEMPTS)); then
      rm -f "$WORK_DIR/image.partial"
      power_off "fetching the image failed $attempt times"
    fi
    sleep "$((attempt * BACKOFF_S))"
    attempt=$((attempt + 1))
  done
}

# Compares the downloaded bytes with the grant's post-hash; nothing runs unless they match.
verify_image() {
  local sum
  sum=$(sha256sum "$WORK_DIR/image.partial") || power_off "cannot hash the image"
  sum=${sum%% *}
  if [[ $sum != "$IMAGE_SHA256" ]]; then
    rm -f "$WORK_DIR/image.partial"
    power_off "the image's sha256 is $sum, the grant names $IMAGE_SHA256"
  fi
  mv -f "$WORK_DIR/image.partial" "$WORK_DIR/image.tar" || power_off "cannot keep the image"
  log "the image's sha256 matches the grant"
}

# Loads the verified archive, which must hold exactly one image, and starts that image.
load_and_run() {
  local out line ref="" count=0 name="grant-${GRANT_ID:0:16}"
  command -v "$CONTAINER_RUNTIME" >/dev/null || power_off "$CONTAINER_RUNTIME is not installed"
  if [[ $CONTAINER_RUNTIME == docker ]]; then
    systemctl start docker.service || power_off "cannot start docker.service"
  fi
  out=$("$CONTAINER_RUNTIME" load --input "$WORK_DIR/image.tar") || power_off "$CONTAINER_RUNTIME load failed"
  rm -f "$WORK_DIR/image.tar"
  while IFS= read -r line; do
    case $line in
      "Loaded image: "*) ref=${line#"Loaded image: "} ;;
      "Loaded image ID: "*) ref=${line#"Loaded image ID: "} ;;
      "Loaded image(s): "*) ref=${line#"Loaded image(s): "} ;;
      *) continue ;;
    esac
    count=$((count + 1))
  done <<<"$out"
  ((count == 1)) || power_off "the archive must hold exactly one image, it held $count"
  [[ $ref =~ $IMAGE_REF_RE ]] || power_off "the loaded image is named $(printf '%q' "$ref")"
  # --pull=never: the runtime must never fetch some other image from a registry.
  "$CONTAINER_RUNTIME" run --detach --pull=never --restart=unless-stopped --name "$name" "$ref" >/dev/null ||
    power_off "$CONTAINER_RUNTIME run failed"
  log "started $ref as $name"
}

main() {
  [[ $# -eq 2 ]] || power_off "usage: boot.sh start|arm-deadline VARS_FILE"
  read_vars "$2"
  case $1 in
    arm-deadline) arm_deadline ;;
    start)
      arm_deadline
      check_login_user
      show_host_key
      fetch_image
      verify_image
      load_and_run
      ;;
    *) power_off "unknown mode $(printf '%q' "$1")" ;;
  esac
}

main "$@"
