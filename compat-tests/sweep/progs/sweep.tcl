# Tcl workload for the native-vs-shim sweep: event-loop socket server/client on 127.0.0.1,
# fileevent, exec with pipelines, open |cmd, file I/O.
set done 0
proc accept {chan addr port} { fconfigure $chan -buffering line; fileevent $chan readable [list echo $chan] }
proc echo {chan} {
    if {[gets $chan line] < 0} { if {[eof $chan]} { close $chan } ; return }
    puts $chan [string toupper $line]
}
set srv [socket -server accept -myaddr 127.0.0.1 0]
set port [lindex [fconfigure $srv -sockname] 2]
set replies {}
proc client {i} {
    global port
    set c [socket 127.0.0.1 $port]
    fconfigure $c -buffering line -blocking 0
    fileevent $c readable [list got $c $i]
    puts $c "msg$i"
}
proc got {c i} {
    global replies done
    if {[gets $c line] >= 0} { lappend replies $line; close $c; incr done }
}
for {set i 0} {$i < 5} {incr i} { client $i }
after 10000 {set done timeout}
while {$done ne "timeout" && $done < 5} { vwait done }
puts "socket replies: [lsort $replies]"
close $srv
puts "exec: [exec sh -c {echo a; echo b} | tr a-z A-Z | sort -r]"
set f [open "|sh -c {cat; exit 0}" r+]
puts $f "through-pipe"; flush $f; chan close $f write
puts "open-pipe: [gets $f]"; close $f
if {[catch {exec sh -c {exit 3}} msg opts]} { puts "exec exit: [lindex [dict get $opts -errorcode] 2]" }
if {[catch {exec /no/such/bin} msg]} { puts "exec missing: [string match {*no such file*} $msg]" }
set fn /tmp/sweep-tcl-[pid]
set f [open $fn w]; for {set i 0} {$i < 1000} {incr i} { puts $f "line $i" }; close $f
set f [open $fn r]; set n [llength [split [string trim [read $f]] \n]]; close $f
puts "file lines: $n size: [file size $fn]"; file delete $fn
puts "glob nonempty: [expr {[llength [glob -nocomplain /etc/*]] > 0}]"
puts done
