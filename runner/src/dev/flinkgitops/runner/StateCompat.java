package dev.flinkgitops.runner;

import java.io.DataInputStream;
import java.io.File;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.flink.api.dag.Pipeline;
import org.apache.flink.client.FlinkPipelineTranslationUtil;
import org.apache.flink.client.program.PackagedProgram;
import org.apache.flink.client.program.PackagedProgramUtils;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.core.fs.FileSystem;
import org.apache.flink.core.plugin.PluginUtils;
import org.apache.flink.runtime.OperatorIDPair;
import org.apache.flink.runtime.checkpoint.Checkpoints;
import org.apache.flink.runtime.checkpoint.OperatorState;
import org.apache.flink.runtime.checkpoint.OperatorSubtaskState;
import org.apache.flink.runtime.checkpoint.metadata.CheckpointMetadata;
import org.apache.flink.runtime.jobgraph.JobGraph;
import org.apache.flink.runtime.jobgraph.JobVertex;
import org.apache.flink.runtime.jobgraph.OperatorID;
import org.apache.flink.runtime.jobgraph.SavepointRestoreSettings;
import org.apache.flink.runtime.state.CompletedCheckpointStorageLocation;
import org.apache.flink.runtime.state.filesystem.AbstractFsCheckpointStorageAccess;
import org.apache.flink.streaming.api.graph.StreamGraph;
import org.apache.flink.streaming.api.graph.StreamGraphHasherV2;
import org.apache.flink.streaming.api.graph.StreamNode;

/**
 * The facts behind "can the new version restore this savepoint?", for {@code flink-gitops plan
 * --check-state}. Runs on the developer's or agent's machine with the local Flink distribution, never
 * on the cluster:
 *
 * <pre>
 * java -cp runner.jar:$FLINK_HOME/lib/* dev.flinkgitops.runner.StateCompat \
 *     [--savepoint PATH] [--jar JOB.jar [--class MAIN] [--parallelism N] [--option KEY VALUE]... [-- ARGS...]]
 * java ... StateCompat --from FILE      (the same arguments in FILE, separated by NUL bytes)
 * </pre>
 *
 * <p>With {@code --jar}, the program's {@code main} runs the way Flink's own "show plan" runs it (its
 * {@code execute} is intercepted, nothing is submitted) and the job graph Flink would schedule is
 * described: per vertex its operators with the ids Flink matches savepoint state against (the
 * generated id, and the user-defined one of {@code setUidHash}), their uid and name. A SQL pipeline is
 * the runner JAR with {@code --class dev.flinkgitops.runner.SqlRunner} and its statements as
 * arguments, exactly as the agent submits it. With {@code --savepoint}, the savepoint's {@code
 * _metadata} is read with {@link Checkpoints#loadCheckpointMetadata}: per operator state its id, the
 * uid and name Flink recorded, its size, and whether it holds any state (Flink refuses to drop state
 * only when it is not empty). Each state also says whether the new graph has an operator with its id.
 * The verdict (which state would not be restored, max parallelism) is drawn by the agent.
 *
 * <p>One JSON object goes to stdout; everything else the program or Flink prints goes to stderr. A
 * failure is {@code {"error": {"stage": "usage"|"graph"|"savepoint", "message": ...}}} with exit
 * code 1, so the caller can tell "the new program does not build" from "the savepoint cannot be read
 * here".
 */
public final class StateCompat {
    private StateCompat() {}

    public static void main(String[] argv) throws Exception {
        // The user's main, Flink and log4j may print; only our JSON goes to the real stdout.
        PrintStream out = new PrintStream(System.out, true, StandardCharsets.UTF_8);
        System.setOut(System.err);
        String stage = "usage";
        try {
            List<String> args = expand(argv);
            String savepoint = null;
            String jar = null;
            String mainClass = null;
            int parallelism = 1;
            Configuration options = new Configuration();
            List<String> programArgs = new ArrayList<>();
            for (int i = 0; i < args.size(); i++) {
                String arg = args.get(i);
                if (arg.equals("--")) {
                    programArgs.addAll(args.subList(i + 1, args.size()));
                    break;
                }
                switch (arg) {
                    case "--savepoint":
                        savepoint = value(args, ++i, arg);
                        break;
                    case "--jar":
                        jar = value(args, ++i, arg);
                        break;
                    case "--class":
                        mainClass = value(args, ++i, arg);
                        break;
                    case "--parallelism":
                        parallelism = Integer.parseInt(value(args, ++i, arg));
                        break;
                    case "--option":
                        String key = value(args, ++i, arg);
                        options.setString(key, value(args, ++i, arg));
                        break;
                    default:
                        throw new IllegalArgumentException("unknown argument: " + arg);
                }
            }
            if (savepoint == null && jar == null) {
                throw new IllegalArgumentException("give --savepoint PATH, --jar JOB.jar, or both");
            }
            StringBuilder json = new StringBuilder("{");
            Map<OperatorID, String> claimedBy = null;
            ClassLoader loader = StateCompat.class.getClassLoader();
            PackagedProgram program = null;
            try {
                if (jar != null) {
                    stage = "graph";
                    program =
                            PackagedProgram.newBuilder()
                                    .setJarFile(new File(jar))
                                    .setEntryPointClassName(mainClass)
                                    .setArguments(programArgs.toArray(new String[0]))
                                    .setConfiguration(options)
                                    .setSavepointRestoreSettings(SavepointRestoreSettings.none())
                                    .build();
                    loader = program.getUserCodeClassLoader();
                    // As PackagedProgramUtils.createJobGraph does, keeping the pipeline for descriptions.
                    Pipeline pipeline =
                            PackagedProgramUtils.getPipelineFromProgram(program, options, parallelism, true);
                    Map<OperatorID, String> descriptions = descriptions(pipeline);
                    JobGraph graph =
                            FlinkPipelineTranslationUtil.getJobGraphUnderUserClassLoader(
                                    loader, pipeline, options, parallelism);
                    claimedBy = new HashMap<>();
                    json.append("\"graph\":");
                    describe(graph, descriptions, claimedBy, json);
                }
                if (savepoint != null) {
                    stage = "savepoint";
                    if (jar != null) {
                        json.append(',');
                    }
                    json.append("\"savepoint\":");
                    describe(savepoint, loader, claimedBy, json);
                }
            } finally {
                if (program != null) {
                    program.close();
                }
            }
            out.println(json.append('}'));
        } catch (Throwable e) {
            out.println(
                    "{\"error\":{\"stage\":"
                            + quote(stage)
                            + ",\"message\":"
                            + quote(message(e))
                            + "}}");
            System.exit(1);
        }
    }

    /** The job graph's vertices with their operators, recording which vertex claims which id. */
    private static void describe(
            JobGraph graph,
            Map<OperatorID, String> descriptions,
            Map<OperatorID, String> claimedBy,
            StringBuilder json) {
        json.append("{\"vertices\":[");
        boolean firstVertex = true;
        for (JobVertex vertex : graph.getVertices()) {
            if (!firstVertex) {
                json.append(',');
            }
            firstVertex = false;
            json.append("{\"id\":").append(quote(vertex.getID().toString()));
            json.append(",\"name\":").append(quote(vertex.getName()));
            json.append(",\"parallelism\":").append(vertex.getParallelism());
            // -1: not set, so Flink adopts the savepoint's max parallelism.
            json.append(",\"max_parallelism\":").append(vertex.getMaxParallelism());
            json.append(",\"operators\":[");
            boolean firstOperator = true;
            for (OperatorIDPair pair : vertex.getOperatorIDs()) {
                if (!firstOperator) {
                    json.append(',');
                }
                firstOperator = false;
                // Flink maps savepoint state to a vertex by either id (Checkpoints.loadAndValidateCheckpoint).
                claimedBy.put(pair.getGeneratedOperatorID(), vertex.getName());
                pair.getUserDefinedOperatorID().ifPresent(id -> claimedBy.put(id, vertex.getName()));
                json.append("{\"id\":").append(quote(pair.getGeneratedOperatorID().toHexString()));
                json.append(",\"user_defined_id\":")
                        .append(quote(pair.getUserDefinedOperatorID().map(OperatorID::toHexString).orElse(null)));
                json.append(",\"uid\":").append(quote(pair.getUserDefinedOperatorUid()));
                json.append(",\"name\":").append(quote(pair.getUserDefinedOperatorName()));
                json.append(",\"description\":")
                        .append(quote(descriptions.get(pair.getGeneratedOperatorID())));
                json.append('}');
            }
            json.append("]}");
        }
        json.append("]}");
    }

    /**
     * Per generated operator id, the operator's description ({@code GroupAggregate(groupBy=[a], ...)}
     * for SQL): what tells two versions of an operator with the same id apart. The ids come from the
     * hasher the job graph generator itself uses.
     */
    private static Map<OperatorID, String> descriptions(Pipeline pipeline) {
        Map<OperatorID, String> descriptions = new HashMap<>();
        if (pipeline instanceof StreamGraph) {
            StreamGraph streamGraph = (StreamGraph) pipeline;
            Map<Integer, byte[]> hashes = new StreamGraphHasherV2().traverseStreamGraphAndGenerateHashes(streamGraph);
            for (StreamNode node : streamGraph.getStreamNodes()) {
                byte[] hash = hashes.get(node.getId());
                if (hash != null) {
                    descriptions.put(new OperatorID(hash), node.getOperatorDescription());
                }
            }
        }
        return descriptions;
    }

    /** The operator states of a savepoint (or retained checkpoint) at {@code pointer}. */
    private static void describe(
            String pointer, ClassLoader loader, Map<OperatorID, String> claimedBy, StringBuilder json)
            throws Exception {
        // s3://, hdfs://... come from the distribution's plugins/ (FLINK_PLUGINS_DIR), as for Flink itself.
        Configuration config = new Configuration();
        FileSystem.initialize(config, PluginUtils.createPluginManagerFromRootFolder(config));
        CompletedCheckpointStorageLocation location =
                AbstractFsCheckpointStorageAccess.resolveCheckpointPointer(pointer);
        CheckpointMetadata metadata;
        try (DataInputStream in = new DataInputStream(location.getMetadataHandle().openInputStream())) {
            metadata = Checkpoints.loadCheckpointMetadata(in, loader, location.getExternalPointer());
        }
        json.append("{\"path\":").append(quote(location.getExternalPointer()));
        json.append(",\"checkpoint_id\":").append(metadata.getCheckpointId());
        json.append(",\"operators\":[");
        boolean first = true;
        for (OperatorState state : metadata.getOperatorStates()) {
            if (!first) {
                json.append(',');
            }
            first = false;
            boolean hasState = state.getCoordinatorState() != null;
            for (OperatorSubtaskState subtask : state.getStates()) {
                hasState |= subtask.hasState();
            }
            json.append("{\"id\":").append(quote(state.getOperatorID().toHexString()));
            json.append(",\"uid\":").append(quote(state.getOperatorUid().orElse(null)));
            json.append(",\"name\":").append(quote(state.getOperatorName().orElse(null)));
            json.append(",\"parallelism\":").append(state.getParallelism());
            json.append(",\"max_parallelism\":").append(state.getMaxParallelism());
            json.append(",\"has_state\":").append(hasState);
            json.append(",\"coordinator_state\":").append(state.getCoordinatorState() != null);
            json.append(",\"state_size\":").append(state.getStateSize());
            if (claimedBy != null) {
                json.append(",\"claimed_by\":").append(quote(claimedBy.get(state.getOperatorID())));
            }
            json.append('}');
        }
        json.append("]}");
        metadata.dispose();
    }

    /** {@code --from FILE}: the arguments, separated by NUL bytes (SQL has no command line limit). */
    private static List<String> expand(String[] argv) throws Exception {
        List<String> args = new ArrayList<>();
        if (argv.length == 2 && argv[0].equals("--from")) {
            String all = new String(Files.readAllBytes(Paths.get(argv[1])), StandardCharsets.UTF_8);
            for (String arg : all.split("\0", -1)) {
                args.add(arg);
            }
            // The file ends with a separator; the empty string after it is no argument.
            if (!args.isEmpty() && args.get(args.size() - 1).isEmpty()) {
                args.remove(args.size() - 1);
            }
        } else {
            args.addAll(List.of(argv));
        }
        return args;
    }

    private static String value(List<String> args, int i, String flag) {
        if (i >= args.size()) {
            throw new IllegalArgumentException(flag + " needs a value");
        }
        return args.get(i);
    }

    /** The innermost causes say what went wrong ("ClassNotFoundException: ..."): all of them, once. */
    private static String message(Throwable e) {
        StringBuilder text = new StringBuilder();
        String previous = null;
        for (Throwable t = e; t != null; t = t.getCause()) {
            String line = t.getClass().getName() + (t.getMessage() == null ? "" : ": " + t.getMessage());
            if (previous == null || !previous.contains(String.valueOf(t.getMessage()))) {
                if (text.length() > 0) {
                    text.append(" <- ");
                }
                text.append(line.strip().split("\\R", 2)[0]);
            }
            previous = line;
            if (t.getCause() == t) {
                break;
            }
        }
        return text.toString();
    }

    private static String quote(String value) {
        if (value == null) {
            return "null";
        }
        StringBuilder quoted = new StringBuilder("\"");
        for (int i = 0; i < value.length(); i++) {
            char c = value.charAt(i);
            switch (c) {
                case '"':
                    quoted.append("\\\"");
                    break;
                case '\\':
                    quoted.append("\\\\");
                    break;
                case '\n':
                    quoted.append("\\n");
                    break;
                case '\r':
                    quoted.append("\\r");
                    break;
                case '\t':
                    quoted.append("\\t");
                    break;
                default:
                    if (c < 0x20) {
                        quoted.append(String.format("\\u%04x", (int) c));
                    } else {
                        quoted.append(c);
                    }
            }
        }
        return quoted.append('"').toString();
    }
}
