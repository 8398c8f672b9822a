// Java workload for the native-vs-shim sweep: threads, blocking sockets on 127.0.0.1,
// an NIO selector echo server, file I/O and ProcessBuilder (posix_spawn via jspawnhelper).
// Prints only deterministic observations.
import java.io.*;
import java.net.*;
import java.nio.ByteBuffer;
import java.nio.channels.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;

public class Sweep {
    public static void main(String[] a) throws Exception {
        // threads
        AtomicLong sum = new AtomicLong();
        ExecutorService ex = Executors.newFixedThreadPool(4);
        List<Future<?>> fs = new ArrayList<>();
        for (int i = 0; i < 8; i++) { final int k = i; fs.add(ex.submit(() -> { for (int j = 0; j < 100000; j++) sum.addAndGet(k); })); }
        for (Future<?> f : fs) f.get();
        System.out.println("threads sum=" + sum.get());

        // blocking ServerSocket + client
        try (ServerSocket ss = new ServerSocket(0, 50, InetAddress.getByName("127.0.0.1"))) {
            Thread srv = new Thread(() -> {
                try {
                    for (int c = 0; c < 3; c++) {
                        try (Socket s = ss.accept()) {
                            BufferedReader r = new BufferedReader(new InputStreamReader(s.getInputStream()));
                            PrintWriter w = new PrintWriter(s.getOutputStream(), true);
                            String line; while ((line = r.readLine()) != null) w.println(line.toUpperCase());
                        }
                    }
                } catch (IOException e) { System.out.println("server error " + e); }
            });
            srv.start();
            for (int c = 0; c < 3; c++) {
                try (Socket s = new Socket("127.0.0.1", ss.getLocalPort())) {
                    s.setSoTimeout(10000);
                    PrintWriter w = new PrintWriter(s.getOutputStream(), true);
                    BufferedReader r = new BufferedReader(new InputStreamReader(s.getInputStream()));
                    w.println("hello " + c); System.out.println("socket reply " + r.readLine());
                    s.shutdownOutput();
                    System.out.println("socket eof " + (r.readLine() == null));
                }
            }
            srv.join();
        }

        // NIO selector echo server, 4 clients, 1 MiB each
        Selector sel = Selector.open();
        ServerSocketChannel ssc = ServerSocketChannel.open();
        ssc.bind(new InetSocketAddress("127.0.0.1", 0));
        ssc.configureBlocking(false);
        ssc.register(sel, SelectionKey.OP_ACCEPT);
        int port = ((InetSocketAddress) ssc.getLocalAddress()).getPort();
        AtomicBoolean stop = new AtomicBoolean();
        Thread loop = new Thread(() -> {
            try {
                ByteBuffer buf = ByteBuffer.allocate(65536);
                while (!stop.get()) {
                    sel.select(200);
                    Iterator<SelectionKey> it = sel.selectedKeys().iterator();
                    while (it.hasNext()) {
                        SelectionKey k = it.next(); it.remove();
                        if (k.isAcceptable()) {
                            SocketChannel c = ssc.accept(); c.configureBlocking(false); c.register(sel, SelectionKey.OP_READ);
                        } else if (k.isReadable()) {
                            SocketChannel c = (SocketChannel) k.channel();
                            buf.clear(); int n = c.read(buf);
                            if (n < 0) { c.close(); continue; }
                            buf.flip(); while (buf.hasRemaining()) c.write(buf);
                        }
                    }
                }
            } catch (IOException e) { System.out.println("selector error " + e); }
        });
        loop.start();
        ExecutorService cl = Executors.newFixedThreadPool(4);
        List<Future<Long>> res = new ArrayList<>();
        for (int c = 0; c < 4; c++) {
            final int seed = c;
            res.add(cl.submit(() -> {
                try (SocketChannel ch = SocketChannel.open(new InetSocketAddress("127.0.0.1", port))) {
                    byte[] data = new byte[1 << 20]; new Random(seed).nextBytes(data);
                    Thread w = new Thread(() -> { try { ch.write(ByteBuffer.wrap(data)); } catch (IOException e) { } });
                    w.start();
                    ByteBuffer in = ByteBuffer.allocate(data.length);
                    while (in.hasRemaining()) if (ch.read(in) < 0) break;
                    w.join();
                    return Arrays.equals(in.array(), data) ? 1L : 0L;
                }
            }));
        }
        long ok = 0; for (Future<Long> f : res) ok += f.get(30, TimeUnit.SECONDS);
        stop.set(true); sel.wakeup(); loop.join(); ssc.close(); sel.close(); cl.shutdown();
        System.out.println("nio echo ok=" + ok + "/4");

        // file I/O
        Path dir = Files.createTempDirectory("sweepj");
        Path f = dir.resolve("data.txt");
        try (BufferedWriter w = Files.newBufferedWriter(f)) { for (int i = 0; i < 10000; i++) w.write("line " + i + "\n"); }
        System.out.println("file lines=" + Files.readAllLines(f).size() + " size=" + Files.size(f));
        try (FileChannel fc = FileChannel.open(f, StandardOpenOption.READ)) {
            ByteBuffer b = ByteBuffer.allocate(9); fc.read(b, 50); System.out.println("pread=" + new String(b.array(), StandardCharsets.US_ASCII).trim());
        }
        try (RandomAccessFile raf = new RandomAccessFile(f.toFile(), "rw")) { raf.setLength(100); }
        Files.move(f, dir.resolve("moved.txt"));
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(dir)) { for (Path p : ds) System.out.println("dir entry " + p.getFileName() + " " + Files.size(p)); }
        Files.delete(dir.resolve("moved.txt")); Files.delete(dir);

        // child processes
        Process p = new ProcessBuilder("sh", "-c", "echo child $0 $1; cat; exit 3", "a", "b").start();
        try (OutputStream o = p.getOutputStream()) { o.write("stdin-data\n".getBytes()); }
        String out = new String(p.getInputStream().readAllBytes());
        System.out.print("child out: " + out);
        System.out.println("child exit=" + p.waitFor());
        Process p2 = new ProcessBuilder("ls", "/nonexistent-sweep").redirectErrorStream(true).start();
        System.out.println("ls exit=" + p2.waitFor() + " out_nonempty=" + (p2.getInputStream().readAllBytes().length > 0));
        try { new ProcessBuilder("/no/such/binary").start(); System.out.println("spawn missing: started?!"); }
        catch (IOException e) { System.out.println("spawn missing: IOException " + (e.getMessage().contains("error=2") ? "ENOENT" : e.getMessage())); }
        List<Process> many = new ArrayList<>();
        for (int i = 0; i < 10; i++) many.add(new ProcessBuilder("true").start());
        int z = 0; for (Process q : many) z += q.waitFor();
        System.out.println("10 children exit sum=" + z);
        ex.shutdown();
        System.out.println("done");
    }
}
