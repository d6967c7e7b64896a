#!/usr/bin/env bash
# Keeps a NIC's interrupts and receive packet steering on the housekeeping cores (default:
# core 0, where siprec's control plane runs) so the data-plane cores only run their loops.
# Usage: tuning/irq-affinity.sh IFACE [CPU_LIST] [--dry-run]
#   IFACE     network interface carrying RTP (e.g. eth0)
#   CPU_LIST  cores for IRQs and RPS, in /proc/irq/*/smp_affinity_list syntax (default 0)
set -euo pipefail
iface=${1:?usage: $0 IFACE [CPU_LIST] [--dry-run]}
cpus=0
dry=0
for arg in "${@:2}"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    *) cpus=$arg ;;
  esac
done
[ -d "/sys/class/net/$iface" ] || { echo "no such interface: $iface" >&2; exit 1; }

apply() { # file value
  if [ "$dry" = 1 ]; then echo "would write $2 > $1"; else echo "$2" > "$1"; fi
}

# IRQs whose name mentions the interface (virtio/ixgbe/mlx5 queues are named after it).
irqs=$(awk -v ifc="$iface" -F: '$0 ~ ifc {gsub(/ /, "", $1); print $1}' /proc/interrupts)
for irq in $irqs; do
  apply "/proc/irq/$irq/smp_affinity_list" "$cpus"
done
[ -n "$irqs" ] || echo "no IRQs named after $iface (virtual or shared NIC): RPS only"

# RPS: the CPU mask for software receive steering, one hex mask per rx queue.
mask=0
IFS=, read -ra parts <<< "$cpus"
for part in "${parts[@]}"; do
  if [[ $part == *-* ]]; then
    for ((c=${part%-*}; c<=${part#*-}; c++)); do mask=$((mask | (1 << c))); done
  else
    mask=$((mask | (1 << part)))
  fi
done
for q in /sys/class/net/"$iface"/queues/rx-*; do
  [ -e "$q/rps_cpus" ] && apply "$q/rps_cpus" "$(printf '%x' "$mask")"
done
echo "irq-affinity: $iface → cores $cpus (mask $(printf '%x' "$mask"))"
