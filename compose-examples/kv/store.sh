#!/bin/sh
# The key-value store's protocol, one connection at a time (`nc -ll -e` runs this script with
# the connection as stdin/stdout): one request line in, one answer line out.
#
#   SET KEY VALUE   -> OK
#   GET KEY         -> VALUE <value> | NOTFOUND
#   DEL KEY         -> OK
#   PING            -> PONG
#
# Each key is a file in /data (a named volume, so the data outlives the container); a write
# goes to a temporary file that is then renamed, so a reader never sees half a value.
read -r cmd key value
case "$cmd" in
  PING) echo PONG; exit 0 ;;
esac
case "$key" in
  '' | .* | *[!A-Za-z0-9_.-]*) echo "ERR bad key"; exit 0 ;;
esac
case "$cmd" in
  SET)
    tmp="/data/.$key.$$"
    if printf '%s\n' "$value" > "$tmp" && mv "$tmp" "/data/$key"; then
      echo OK
    else
      rm -f "$tmp"
      echo "ERR write failed"
    fi
    ;;
  GET)
    if [ -f "/data/$key" ]; then
      printf 'VALUE %s\n' "$(cat "/data/$key")"
    else
      echo NOTFOUND
    fi
    ;;
  DEL) rm -f "/data/$key"; echo OK ;;
  *) echo "ERR unknown command $cmd" ;;
esac
