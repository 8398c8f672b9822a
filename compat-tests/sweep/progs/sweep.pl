#!/usr/bin/perl
# Perl workload for the native-vs-shim sweep: IO::Socket::INET server/client on 127.0.0.1,
# fork, pipes, 4-arg select, IO::Select, socketpair, sysread/syswrite, open "-|".
use strict; use warnings;
use IO::Socket::INET; use IO::Select; use Socket; use POSIX ":sys_wait_h";
$| = 1;

# socket server in a forked child, client in parent
my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 5, ReuseAddr => 1) or die "listen: $!";
my $port = $srv->sockport;
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    for (1..3) {
        my $c = $srv->accept or die "accept: $!";
        while (my $l = <$c>) { print $c scalar reverse($l =~ s/\n//r), "\n"; }
        close $c;
    }
    exit 0;
}
close $srv;
for my $i (1..3) {
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 10) or die "connect: $!";
    print $c "abc$i\n"; shutdown($c, 1);
    my $r = <$c>; chomp $r; print "socket reply $r\n"; close $c;
}
waitpid($pid, 0); print "server child exit ", $? >> 8, "\n";

# pipes + fork + select
pipe(my $r1, my $w1) or die; pipe(my $r2, my $w2) or die;
my @kids;
for my $k (0..1) {
    my $p = fork // die;
    if ($p == 0) { close $r1; close $r2; my $w = $k ? $w2 : $w1; for (1..100) { syswrite($w, "k$k-$_\n"); } exit $k+5; }
    push @kids, $p;
}
close $w1; close $w2;
my $sel = IO::Select->new($r1, $r2); my %lines; my $open = 2;
while ($open) {
    for my $fh ($sel->can_read(10)) {
        my $n = sysread($fh, my $buf, 4096);
        if (!$n) { $sel->remove($fh); $open--; next; }
        $lines{$fh == $r1 ? 'a' : 'b'} += () = $buf =~ /\n/g;
    }
}
my @st; for (@kids) { waitpid($_, 0); push @st, $? >> 8; }
print "pipe lines a=$lines{a} b=$lines{b} exits=@st\n";

# 4-arg select with timeout on an empty pipe
pipe(my $er, my $ew); my $rin = ''; vec($rin, fileno($er), 1) = 1;
my $nf = select(my $rout = $rin, undef, undef, 0.2); print "select timeout nfound=$nf\n";
syswrite($ew, "x"); $nf = select($rout = $rin, undef, undef, 1); print "select ready nfound=$nf\n";

# socketpair
socketpair(my $s1, my $s2, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die;
syswrite($s1, "ping"); sysread($s2, my $b, 4); print "socketpair $b\n";

# open -| (fork+exec) and system/backticks
open(my $ph, '-|', 'sh', '-c', 'echo from-child; exit 0') or die; my $o = <$ph>; close $ph; print "open-| $o";
my $bt = `echo \$((2+3))`; print "backticks $bt";
system('sh', '-c', 'exit 4'); print "system exit ", $? >> 8, "\n";
my $ex = system('/no/such/bin'); print "system missing ", ($ex == -1 ? "-1 $!" : $ex), "\n";
# file I/O
open(my $fh, '>', "/tmp/sweep-perl-$$") or die; print $fh "l$_\n" for 1..1000; close $fh;
open($fh, '<', "/tmp/sweep-perl-$$") or die; my @l = <$fh>; close $fh; unlink "/tmp/sweep-perl-$$";
print "file lines ", scalar(@l), " stat gone ", (-e "/tmp/sweep-perl-$$" ? 0 : 1), "\n";
print "done\n";
