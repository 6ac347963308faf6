namespace PaLM.Dsl.Binding;

/// <summary>Compile-time folding of scalar functions the DSL allows on constants (numbers and dim sizes).</summary>
internal static class ConstEval
{
    public static bool TryUnary(string fn, double x, out double result)
    {
        result = fn switch
        {
            "sqrt" => Math.Sqrt(x),
            "rsqrt" => 1.0 / Math.Sqrt(x),
            "exp" => Math.Exp(x),
            "log" => Math.Log(x),
            "tanh" => Math.Tanh(x),
            "neg" => -x,
            "square" => x * x,
            "sigmoid" => 1.0 / (1.0 + Math.Exp(-x)),
            _ => double.NaN,
        };
        return fn is "sqrt" or "rsqrt" or "exp" or "log" or "tanh" or "neg" or "square" or "sigmoid";
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
