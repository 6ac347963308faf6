namespace PaLM.Dsl.Binding;

/// <summary>Compile-time folding of scalar functions the DSL allows on constants (numbers and dim sizes).</summary>
internal static class ConstEval
{
    private static readonly Dictionary<string, Func<double, double>> s_unary = new(StringComparer.Ordinal)
    {
        ["sqrt"] = Math.Sqrt,
        ["rsqrt"] = x => 1.0 / Math.Sqrt(x),
        ["exp"] = Math.Exp,
        ["log"] = Math.Log,
        ["tanh"] = Math.Tanh,
        ["neg"] = x => -x,
        ["square"] = x => x * x,
        ["sigmoid"] = x => 1.0 / (1.0 + Math.Exp(-x)),
    };

    public static bool TryUnary(string fn, double x, out double result)
    {
        var known = s_unary.TryGetValue(fn, out var f);
        result = known ? f!(x) : double.NaN;
        return known;
    }

    public static double Binary(char op, double a, double b) => op switch
    {
        '+' => a + b,
        '-' => a - b,
        '*' => a * b,
        '/' => a / b,
        _ => throw new ArgumentOutOfRangeException(nameof(op)),
    };

    public static string OpName(char op) => op switch { '+' => "add", '-' => "sub", '*' => "mul", '/' => "div", _ => "?" };
}
