# Sourced by the benchmark scripts: huge pages for their clusters' shared_buffers.
#
# Without them every new backend, and every parallel worker a query starts, maps the shared
# buffers it touches 4 kB at a time (minor page faults: about 27,000 for a first scan of the
# 5M-event table with shared_buffers 2GB); a report run as a whole `psql -c` command pays that
# in each of its processes. PostgreSQL uses huge pages when the kernel has them reserved
# (`huge_pages = try`, its default), and an ordinary server for reports should (see
# README.md, Settings). When run as root, this reserves enough for the cluster
# (`vm.nr_hugepages`) and restore_huge_pages puts the previous count back; otherwise, or
# when the kernel refuses, the benchmark runs without them and says so.
huge_pages_before=""

# reserve_huge_pages MB: room for MB of shared buffers and the rest of the shared memory.
reserve_huge_pages() {
    local page_kb want now
    page_kb=$(awk '/^Hugepagesize:/ { print $2 }' /proc/meminfo 2>/dev/null || true)
    now=$(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0)
    if [ -n "$page_kb" ] && [ "$page_kb" -gt 0 ]; then
        want=$(( ($1 * 1024 + 262144) / page_kb ))
        if [ "$(id -u)" = 0 ] && [ "$now" -lt "$want" ] && echo "$want" > /proc/sys/vm/nr_hugepages 2>/dev/null; then
            huge_pages_before=$now
        fi
    fi
    echo "huge pages reserved: $(cat /proc/sys/vm/nr_hugepages 2>/dev/null || echo 0) of ${page_kb:-?} kB" >&2
}

restore_huge_pages() {
    if [ -n "$huge_pages_before" ]; then echo "$huge_pages_before" > /proc/sys/vm/nr_hugepages || true; fi
}
