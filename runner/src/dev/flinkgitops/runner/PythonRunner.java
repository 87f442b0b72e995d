package dev.flinkgitops.runner;

import java.io.IOException;
import java.lang.reflect.Field;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.nio.file.FileVisitResult;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.SimpleFileVisitor;
import java.nio.file.attribute.BasicFileAttributes;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironmentFactory;

/**
 * Runs one PyFlink program whose sources travel in the run request, so nothing is placed on the
 * JobManager host by hand.
 *
 * <p>Arguments: {@code --file REL_PATH BASE64 [--file ...] (--entry REL_PATH.py | --module NAME)
 * [-- PROGRAM_ARGS...]}. Every {@code --file} is written below a fresh private temporary folder
 * (relative paths of plain segments only: no absolute paths, no {@code ..}). The whole tree is
 * shipped with the job: it is on the {@code PYTHONPATH} of the submitting Python process and of the
 * TaskManagers' Python workers, so the entry can import its helper modules and functions defined in
 * them run on the workers. The entry runs as {@code __main__} with the program arguments.
 *
 * <p>Flink's {@code PythonDriver} (in {@code opt/flink-python-*.jar}; a cluster that runs Python jobs
 * has it in {@code lib/}) starts the Python process. It is looked up by reflection, so this JAR
 * builds against {@code lib/} alone and a cluster without it gets a message naming the fix.
 *
 * <p>Two things {@code flink run -py} does outside PythonDriver are done here:
 *
 * <ul>
 *   <li>The CLI puts {@code -pyfs} into the job's configuration as {@code python.files}; through
 *       REST, PythonDriver only puts it on its own process's {@code PYTHONPATH} and the workers
 *       fail with {@code ModuleNotFoundError}. The runner adds the tree to {@code python.files} of
 *       every execution environment created while the program runs.
 *   <li>PythonDriver reports a failing program as "Python process exits with code: 1", the traceback
 *       only in the JobManager's log. The program runs inside a small wrapper that records the
 *       Python exception, which the runner throws as the root cause Flink hands back.
 * </ul>
 *
 * <p>PythonDriver allows one Python program per JobManager at a time; concurrent run requests of
 * this class wait for each other.
 */
public final class PythonRunner {
    private PythonRunner() {}

    private static final String DRIVER = "org.apache.flink.client.python.PythonDriver";
    private static final ConfigOption<String> PYTHON_FILES =
            ConfigOptions.key("python.files").stringType().noDefaultValue();
    /** Lines of stderr kept for a program that exits with a status (argparse prints its error there). */
    private static final int STDERR_LINES = 5;
    /** Frames of the shipped tree named in a failure. */
    private static final int FRAMES = 5;

    /**
     * This run's context factory. Every run request loads this class in its own class loader, and
     * the Python program's py4j threads resolve it through theirs, so each program sees its own.
     */
    private static volatile StreamExecutionEnvironmentFactory context;

    /**
     * Called by the wrapper through py4j before the program starts: makes this run's context
     * factory the calling py4j thread's own. Flink resolves a thread's factory before the static
     * one, which any other run request sets and then clears (a program that finds none builds a
     * local MiniCluster inside the JobManager instead of submitting its job).
     */
    public static void bindContext() throws ReflectiveOperationException {
        StreamExecutionEnvironmentFactory factory = context;
        if (factory == null) {
            throw new IllegalStateException("bindContext outside of a PythonRunner run");
        }
        ContextEnvironments.threadLocal().set(factory);
    }

    /** The parsed arguments. */
    static final class Invocation {
        final Map<String, byte[]> files = new LinkedHashMap<>();
        String entryFile;
        String entryModule;
        final List<String> programArgs = new ArrayList<>();
    }

    /** A failure of the Python program, as Python reported it; printed without a Java class name. */
    static final class PythonProgramError extends RuntimeException {
        PythonProgramError(String report) {
            super(report, null, false, false);
        }

        @Override
        public String toString() {
            return getMessage();
        }
    }

    public static void main(String[] args) throws Exception {
        Invocation invocation = parse(args);
        Path work = Files.createTempDirectory(
                "flink-gitops-py-", PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rwx------")));
        try {
            Path tree = work.resolve("tree");
            for (Map.Entry<String, byte[]> file : invocation.files.entrySet()) {
                Path target = tree.resolve(file.getKey());
                Files.createDirectories(target.getParent());
                Files.write(target, file.getValue());
            }
            Files.createDirectories(tree);
            Path report = work.resolve("failure.txt");
            Path wrapper = work.resolve("run.py");
            Files.writeString(wrapper, wrapper(invocation, tree, report));
            List<String> driverArgs = new ArrayList<>(List.of("-py", wrapper.toString(), "-pyfs", tree.toString()));
            driverArgs.addAll(invocation.programArgs);
            runDriver(driverArgs.toArray(new String[0]), tree, report);
        } finally {
            // The submitted job has its own copy: python.files are uploaded to the blob server with it.
            deleteTree(work);
        }
    }

    /** Parses and checks the arguments; every failure names the argument. */
    static Invocation parse(String[] args) {
        Invocation invocation = new Invocation();
        int i = 0;
        for (; i < args.length; i++) {
            String arg = args[i];
            if (arg.equals("--")) {
                i++;
                break;
            }
            switch (arg) {
                case "--file": {
                    if (i + 2 >= args.length) {
                        throw new IllegalArgumentException("--file needs a relative path and base64 content");
                    }
                    String path = relativePath(args[++i]);
                    byte[] content;
                    try {
                        content = Base64.getDecoder().decode(args[++i]);
                    } catch (IllegalArgumentException e) {
                        throw new IllegalArgumentException("--file " + path + ": content is not base64: " + e.getMessage());
                    }
                    if (invocation.files.put(path, content) != null) {
                        throw new IllegalArgumentException("--file " + path + " is given twice");
                    }
                    break;
                }
                case "--entry":
                    if (i + 1 >= args.length) {
                        throw new IllegalArgumentException("--entry needs a relative path");
                    }
                    invocation.entryFile = relativePath(args[++i]);
                    break;
                case "--module":
                    if (i + 1 >= args.length) {
                        throw new IllegalArgumentException("--module needs a module name");
                    }
                    invocation.entryModule = args[++i];
                    if (!invocation.entryModule.matches("[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)*")) {
                        throw new IllegalArgumentException("--module " + invocation.entryModule + " is not a module name");
                    }
                    break;
                default:
                    throw new IllegalArgumentException("unknown argument: " + arg + " (program arguments go after --)");
            }
        }
        for (; i < args.length; i++) {
            invocation.programArgs.add(args[i]);
        }
        if ((invocation.entryFile == null) == (invocation.entryModule == null)) {
            throw new IllegalArgumentException("give exactly one of --entry REL_PATH.py and --module NAME");
        }
        if (invocation.entryFile != null && !invocation.files.containsKey(invocation.entryFile)) {
            throw new IllegalArgumentException("--entry " + invocation.entryFile + " is not one of the --file paths");
        }
        return invocation;
    }

    /** A relative path of plain segments: not absolute, no {@code ..}, {@code .} or empty segment. */
    static String relativePath(String path) {
        if (path.isEmpty() || path.startsWith("/")) {
            throw new IllegalArgumentException("not a relative path: " + path);
        }
        if (path.indexOf('\\') >= 0 || path.indexOf('\0') >= 0) {
            throw new IllegalArgumentException("backslash or NUL in path: " + path);
        }
        for (String segment : path.split("/", -1)) {
            if (segment.isEmpty() || segment.equals(".") || segment.equals("..")) {
                throw new IllegalArgumentException("empty, . or .. segment in path: " + path);
            }
        }
        return path;
    }

    /**
     * The script PythonDriver starts: runs the entry as {@code __main__} (like {@code python FILE} or
     * {@code python -m NAME}) and, when an exception escapes it, writes the exception and the frames
     * of the shipped tree to {@code report} before re-raising it.
     */
    static String wrapper(Invocation invocation, Path tree, Path report) {
        String run = invocation.entryFile != null
                ? String.join("\n",
                        "    _entry = os.path.join(_TREE, " + py(invocation.entryFile) + ")",
                        "    sys.argv[0] = _entry",
                        "    sys.path[0] = os.path.dirname(_entry)",
                        "    runpy.run_path(_entry, run_name='__main__')")
                : String.join("\n",
                        "    sys.path[0] = _TREE",
                        "    runpy.run_module(" + py(invocation.entryModule) + ", run_name='__main__', alter_sys=True)");
        return String.join("\n",
                "# Written by dev.flinkgitops.runner.PythonRunner.",
                "import os, runpy, sys, traceback",
                "_TREE = " + py(tree.toString()),
                "_REPORT = " + py(report.toString()),
                "",
                "class _Tail:",
                "    \"\"\"Passes stderr through and keeps its last lines.\"\"\"",
                "    def __init__(self, inner):",
                "        self.inner, self.lines = inner, []",
                "    def write(self, text):",
                "        self.lines = (self.lines + text.splitlines())[-" + STDERR_LINES + ":]",
                "        return self.inner.write(text)",
                "    def __getattr__(self, name):",
                "        return getattr(self.inner, name)",
                "",
                "sys.stderr = _Tail(sys.stderr)",
                "from pyflink.java_gateway import get_gateway",
                "get_gateway().jvm.dev.flinkgitops.runner.PythonRunner.bindContext()",
                "try:",
                run,
                "except SystemExit as e:",
                "    if e.code not in (None, 0):",
                "        with open(_REPORT, 'w') as f:",
                "            f.write('\\n'.join(['SystemExit: %s' % e.code] + sys.stderr.lines))",
                "    raise",
                "except BaseException as e:",
                "    frames = [f for f in traceback.extract_tb(e.__traceback__)",
                "              if f.filename.startswith(_TREE + os.sep)][-" + FRAMES + ":]",
                "    text = ''.join(traceback.format_exception_only(type(e), e)).rstrip('\\n')",
                "    if frames:",
                "        text += '\\nPython traceback (most recent call last, files of the program):'",
                "        for f in frames:",
                "            text += '\\n  File \"%s\", line %s, in %s' % (os.path.relpath(f.filename, _TREE), f.lineno, f.name)",
                "    with open(_REPORT, 'w') as f:",
                "        f.write(text)",
                "    raise",
                "");
    }

    /** A Python string literal (ASCII, escaped). */
    private static String py(String s) {
        StringBuilder out = new StringBuilder("'");
        for (char c : s.toCharArray()) {
            if (c == '\\' || c == '\'') {
                out.append('\\').append(c);
            } else if (c < 0x20 || c > 0x7e) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('\'').toString();
    }

    private static void runDriver(String[] driverArgs, Path tree, Path report) throws Exception {
        Class<?> driver;
        try {
            driver = Class.forName(DRIVER);
        } catch (ClassNotFoundException e) {
            throw new IllegalStateException(
                    "this Flink cluster cannot run Python jobs: " + DRIVER + " is not on its classpath; "
                            + "copy opt/flink-python-*.jar into lib/ and restart the cluster");
        }
        Method main = driver.getMethod("main", String[].class);
        // PythonDriver keeps one py4j gateway per JVM (a second at the same time fails in
        // PythonEnvUtils.setGatewayServer), and the context factory below is a JVM-wide static:
        // Python programs take turns. The class comes from lib/, so every run request shares it.
        synchronized (driver) {
            StreamExecutionEnvironmentFactory original = ContextEnvironments.current();
            if (original == null) {
                throw new IllegalStateException(
                        "no Flink context environment: run this class through Flink (flink run or /jars/:id/run)");
            }
            String shipped = pythonFiles(tree.toString());
            context = conf -> {
                Configuration withTree = new Configuration(conf);
                withTree.set(PYTHON_FILES, shipped);
                return original.createExecutionEnvironment(withTree);
            };
            ContextEnvironments.install(context);
            try {
                main.invoke(null, (Object) driverArgs);
            } catch (InvocationTargetException e) {
                String failure = readReport(report);
                if (failure != null) {
                    throw new PythonProgramError(failure);
                }
                Throwable cause = e.getCause();
                throw cause instanceof Exception ? (Exception) cause : e;
            } finally {
                ContextEnvironments.install(original);
                context = null;
            }
        }
    }

    /** {@code python.files} with the tree first, keeping any the cluster or run request sets. */
    private static String pythonFiles(String tree) {
        String configured = StreamExecutionEnvironment.getExecutionEnvironment().getConfiguration().get(PYTHON_FILES);
        return configured == null || configured.isEmpty() ? tree : tree + "," + configured;
    }

    private static String readReport(Path report) {
        try {
            String text = Files.readString(report).strip();
            return text.isEmpty() ? null : text;
        } catch (IOException e) {
            return null;
        }
    }

    /**
     * The factory behind {@link StreamExecutionEnvironment#getExecutionEnvironment()} while Flink runs
     * a program's {@code main}. Flink sets it for the main thread and as a static, and the Python
     * program reaches it from py4j's threads through the static one.
     */
    static final class ContextEnvironments extends StreamExecutionEnvironment {
        private ContextEnvironments() {}

        @SuppressWarnings("unchecked")
        static ThreadLocal<StreamExecutionEnvironmentFactory> threadLocal() throws ReflectiveOperationException {
            Field local = StreamExecutionEnvironment.class.getDeclaredField("threadLocalContextEnvironmentFactory");
            local.setAccessible(true);
            return (ThreadLocal<StreamExecutionEnvironmentFactory>) local.get(null);
        }

        static StreamExecutionEnvironmentFactory current() throws ReflectiveOperationException {
            StreamExecutionEnvironmentFactory factory = threadLocal().get();
            if (factory != null) {
                return factory;
            }
            Field global = StreamExecutionEnvironment.class.getDeclaredField("contextEnvironmentFactory");
            global.setAccessible(true);
            return (StreamExecutionEnvironmentFactory) global.get(null);
        }

        /** Sets both the main thread's and the static factory. */
        static void install(StreamExecutionEnvironmentFactory factory) {
            initializeContextEnvironment(factory);
        }
    }

    private static void deleteTree(Path tree) {
        try {
            Files.walkFileTree(tree, new SimpleFileVisitor<>() {
                @Override
                public FileVisitResult visitFile(Path file, BasicFileAttributes attrs) throws IOException {
                    Files.delete(file);
                    return FileVisitResult.CONTINUE;
                }

                @Override
                public FileVisitResult postVisitDirectory(Path dir, IOException e) throws IOException {
                    Files.delete(dir);
                    return FileVisitResult.CONTINUE;
                }
            });
        } catch (IOException e) {
            // A leftover temporary folder is not worth failing a submitted job for.
        }
    }
}
