import CulvertTools
import Foundation

/// Reads what processes the benchmark started have spent so far: CPU time (from /proc/PID/stat), heap allocations
/// (from the counter file the allocation-counting library keeps, see ``AllocationCounterLibrary``) and resident
/// memory (from /proc/PID/status). Sampled before and after a measurement, the differences give the cost per
/// operation with the noise of single timings averaged out.
struct ProcessMeter: Sendable {
    struct Sample: Sendable {
        var cpuSeconds: Double
        /// nil when the processes run without the allocation counter.
        var allocations: UInt64?
        var residentBytes: Int
    }

    let pids: [pid_t]
    let counterPaths: [String]

    func sample() -> Sample {
        var allocations: UInt64? = self.counterPaths.isEmpty ? nil : 0
        for path in self.counterPaths {
            guard let data = FileManager.default.contents(atPath: path), data.count >= 8 else {
                allocations = nil
                break
            }
            allocations! += data.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        }
        return Sample(
            cpuSeconds: self.pids.map(Self.cpuSeconds).reduce(0, +),
            allocations: allocations,
            residentBytes: self.pids.map(Self.residentBytes).reduce(0, +)
        )
    }

    /// User and system CPU time of `pid`, in seconds (fields 14 and 15 of /proc/PID/stat, in clock ticks).
    static func cpuSeconds(_ pid: pid_t) -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let end = text.lastIndex(of: ")")
        else { return 0 }
        // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
        let fields = text[text.index(after: end)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Resident memory of `pid`, in bytes (VmRSS of /proc/PID/status).
    static func residentBytes(_ pid: pid_t) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
            let kib = Int(line.split(separator: " ").dropFirst().first ?? "")
        else { return 0 }
        return kib * 1024
    }
}

/// An LD_PRELOAD library, compiled by the benchmark with the system C compiler, that counts every heap allocation
/// of the process it is loaded into into a file the benchmark reads (8 bytes, shared mapping). glibc's own
/// `__libc_*` entry points do the allocating, so no `dlsym` (which allocates itself) is involved. Written here
/// rather than taken from a package: ordo-one's malloc counters measure the process that links them, and the
/// figure wanted is of the tunnel's two processes while another drives them.
enum AllocationCounterLibrary {
    /// Compiles the library into `directory`; nil (and a note why) when there is no C compiler.
    static func build(in directory: String) -> String? {
        guard let compiler = ["/usr/bin/cc", "/usr/bin/gcc", "/usr/bin/clang"].first(where: FileManager.default.isExecutableFile) else {
            return nil
        }
        let source = "\(directory)/allocation-counter.c"
        let library = "\(directory)/allocation-counter.so"
        guard FileManager.default.createFile(atPath: source, contents: Data(Self.source.utf8)),
            ChildProcess.run(compiler, ["-O2", "-shared", "-fPIC", "-o", library, source]) != nil,
            FileManager.default.fileExists(atPath: library)
        else { return nil }
        return library
    }

    /// The environment that makes a child count its allocations into `counterPath`.
    static func environment(library: String, counterPath: String) -> [String: String] {
        ["LD_PRELOAD": library, "CULVERT_ALLOCATION_COUNTER": counterPath]
    }

    static let source = """
        #define _GNU_SOURCE
        #include <fcntl.h>
        #include <stdatomic.h>
        #include <stddef.h>
        #include <stdlib.h>
        #include <sys/mman.h>
        #include <unistd.h>

        extern void *__libc_malloc(size_t size);
        extern void *__libc_calloc(size_t count, size_t size);
        extern void *__libc_realloc(void *pointer, size_t size);
        extern void *__libc_memalign(size_t alignment, size_t size);

        static _Atomic unsigned long fallback;
        static _Atomic unsigned long *counter = &fallback;

        __attribute__((constructor)) static void map_counter(void) {
            const char *path = getenv("CULVERT_ALLOCATION_COUNTER");
            if (path == NULL) return;
            int fd = open(path, O_RDWR | O_CREAT, 0600);
            if (fd < 0) return;
            if (ftruncate(fd, sizeof(unsigned long)) == 0) {
                void *mapped = mmap(NULL, sizeof(unsigned long), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
                if (mapped != MAP_FAILED) counter = mapped;
            }
            close(fd);
        }

        static inline void count(void) { atomic_fetch_add_explicit(counter, 1, memory_order_relaxed); }
        void *malloc(size_t size) { count(); return __libc_malloc(size); }
        void *calloc(size_t number, size_t size) { count(); return __libc_calloc(number, size); }
        void *realloc(void *pointer, size_t size) { count(); return __libc_realloc(pointer, size); }
        void *memalign(size_t alignment, size_t size) { count(); return __libc_memalign(alignment, size); }
        void *aligned_alloc(size_t alignment, size_t size) { count(); return __libc_memalign(alignment, size); }
        int posix_memalign(void **result, size_t alignment, size_t size) {
            count();
            void *pointer = __libc_memalign(alignment, size);
            if (pointer == NULL) return 12;
            *result = pointer;
            return 0;
        }
        """
}
