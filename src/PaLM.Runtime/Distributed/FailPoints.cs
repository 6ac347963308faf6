namespace PaLM.Runtime.Distributed;

/// <summary>
/// Fault injection for the multi-process tests, in the spirit of Checkpoint's PALMC_FAILPOINT_CHECKPOINT_*: with
/// PALMC_FAILPOINT_COMPILE_RANK=R, the process that is rank R of an MPI job (OMPI_COMM_WORLD_RANK) fails while
/// compiling, as a rank that sees a broken graph would. Unset, nothing happens.
/// </summary>
public static class FailPoints
{
    public static void Compile()
    {
        if (Environment.GetEnvironmentVariable("PALMC_FAILPOINT_COMPILE_RANK") is { Length: > 0 } r
            && r == Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_RANK"))
            throw new InvalidOperationException($"failpoint PALMC_FAILPOINT_COMPILE_RANK={r}: this rank's compile fails");
    }
}
