import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.concurrent.CountDownLatch;

import sun.misc.Signal;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

/**
 * A one-datanode HDFS (Hadoop's MiniDFSCluster) for the test suite, on 127.0.0.1 only.
 *
 * <pre>
 * java -cp CLASSES:$(cat classpath.txt) MiniHdfs --base-dir DIR [--uri-file FILE]
 *      [--port N] [--http-port N] [--ignore-stdin]
 * </pre>
 *
 * Port 0 (the default) takes a free port. When the cluster is up it prints
 * {@code HDFS_URI=hdfs://127.0.0.1:PORT} and {@code HDFS_HTTP=http://127.0.0.1:PORT} (the
 * namenode's web/WebHDFS address) on stdout, and writes the same lines to the uri file (written
 * to a temporary name and renamed, so a reader never sees half of it). It then runs until its
 * standard input is closed (its parent died or closed the pipe; unless --ignore-stdin) or it
 * gets SIGTERM/SIGINT/SIGHUP, and shuts the cluster down (in the main thread, not in a JVM
 * shutdown hook: MiniDFSCluster.shutdown() removes shutdown hooks, which a hook may not do).
 * Hadoop logs at WARN through slf4j-simple on stderr; override with
 * {@code -Dorg.slf4j.simpleLogger.defaultLogLevel=info}.
 */
public final class MiniHdfs {
    private static final CountDownLatch STOP = new CountDownLatch(1);

    private MiniHdfs() {}

    public static void main(String[] args) throws Exception {
        if (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel") == null) {
            System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        }
        File baseDir = null;
        Path uriFile = null;
        int port = 0;
        int httpPort = 0;
        boolean watchStdin = true;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--base-dir": baseDir = new File(args[++i]).getAbsoluteFile(); break;
                case "--uri-file": uriFile = Path.of(args[++i]).toAbsolutePath(); break;
                case "--port": port = Integer.parseInt(args[++i]); break;
                case "--http-port": httpPort = Integer.parseInt(args[++i]); break;
                case "--ignore-stdin": watchStdin = false; break;
                default:
                    System.err.println("MiniHdfs: unknown argument " + args[i]);
                    System.err.println("usage: MiniHdfs --base-dir DIR [--uri-file FILE] [--port N]"
                                       + " [--http-port N] [--ignore-stdin]");
                    System.exit(2);
            }
        }
        if (baseDir == null) {
            System.err.println("MiniHdfs: --base-dir is required");
            System.exit(2);
        }
        Files.createDirectories(baseDir.toPath());

        Configuration conf = new Configuration();
        conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, baseDir.getPath());
        conf.set("hadoop.tmp.dir", new File(baseDir, "tmp").getPath());
        conf.setBoolean("dfs.permissions.enabled", false);
        conf.setInt("dfs.replication", 1);
        conf.setInt("dfs.namenode.replication.min", 1);
        conf.setLong("dfs.heartbeat.interval", 1);
        conf.setInt("dfs.namenode.safemode.extension", 0);
        conf.setBoolean("dfs.webhdfs.enabled", true);
        // WebHDFS writes go through a DFSClient in the datanode: its first "is the closed
        // block complete?" retry after 50 ms instead of 400 ms.
        conf.setInt("dfs.client.block.write.locateFollowingBlock.initial.delay.ms", 50);
        // Everything on the loopback address: the namenode's RPC/HTTP addresses are set by
        // MiniDFSCluster from the ports below; the datanode's are set here and honoured
        // because of checkDataNodeAddrConfig(true).
        conf.set("dfs.datanode.address", "127.0.0.1:0");
        conf.set("dfs.datanode.http.address", "127.0.0.1:0");
        conf.set("dfs.datanode.https.address", "127.0.0.1:0");
        conf.set("dfs.datanode.ipc.address", "127.0.0.1:0");
        conf.set("dfs.namenode.https-address", "127.0.0.1:0");
        conf.set("dfs.namenode.secondary.http-address", "127.0.0.1:0");
        conf.set("dfs.namenode.secondary.https-address", "127.0.0.1:0");
        conf.set("dfs.namenode.backup.address", "127.0.0.1:0");
        conf.set("dfs.namenode.backup.http-address", "127.0.0.1:0");
        conf.setBoolean("dfs.datanode.use.datanode.hostname", false);
        conf.setBoolean("dfs.client.use.datanode.hostname", false);

        for (String name : new String[] {"TERM", "INT", "HUP"}) {
            Signal.handle(new Signal(name), sig -> {
                System.err.println("MiniHdfs: SIG" + sig.getName() + ", shutting down");
                STOP.countDown();
            });
        }

        long t0 = System.nanoTime();
        MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf, baseDir)
                .numDataNodes(1)
                .storagesPerDatanode(1)
                .nameNodePort(port)
                .nameNodeHttpPort(httpPort)
                .format(true)
                .checkDataNodeAddrConfig(true)
                .checkExitOnShutdown(false)
                .waitSafeMode(true)
                .build();
        cluster.waitActive();
        InetSocketAddress http = cluster.getNameNode().getHttpAddress();
        String uri = "hdfs://127.0.0.1:" + cluster.getNameNodePort();
        String lines = "HDFS_URI=" + uri + "\n"
                + "HDFS_HTTP=http://127.0.0.1:" + http.getPort() + "\n";
        if (uriFile != null) {
            Path tmp = uriFile.resolveSibling(uriFile.getFileName() + ".tmp");
            Files.writeString(tmp, lines, StandardCharsets.UTF_8);
            Files.move(tmp, uriFile, StandardCopyOption.REPLACE_EXISTING,
                       StandardCopyOption.ATOMIC_MOVE);
        }
        System.err.printf("MiniHdfs: up in %.1f s at %s%n", (System.nanoTime() - t0) / 1e9, uri);
        System.out.print(lines);
        System.out.flush();

        if (watchStdin) {
            Thread watcher = new Thread(() -> {
                InputStream in = System.in;
                byte[] buf = new byte[256];
                try {
                    while (in.read(buf) >= 0) {
                        // input is ignored; its end means "stop"
                    }
                } catch (IOException e) {
                    // a broken stdin counts as closed
                }
                System.err.println("MiniHdfs: stdin closed, shutting down");
                STOP.countDown();
            }, "minihdfs-stdin");
            watcher.setDaemon(true);
            watcher.start();
        }
        STOP.await();

        t0 = System.nanoTime();
        int rc = 0;
        try {
            cluster.shutdown();
        } catch (Throwable e) {
            System.err.println("MiniHdfs: shutdown failed: " + e);
            rc = 1;
        }
        System.err.printf("MiniHdfs: stopped in %.1f s%n", (System.nanoTime() - t0) / 1e9);
        System.exit(rc);
    }
}
