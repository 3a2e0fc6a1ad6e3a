// Shared integer primitives of intsim (docs/SPEC.md sections 1.3-1.4), as Verilog functions
// and a task, `include'd INSIDE a module body (rtl/requant.v, rtl/di_norm_scale.v).
// Simulation-level: wide `/` and `%` stand for the divider a design would build; the values,
// not the structure, are normative.
//
//   round_qr   q + r/d rounded by a rounding code (0 <= r < d, q the floor quotient)
//   div_round  rnd(a / b), b >= 1, any sign of a (floor quotient, then round_qr)
//   bitlen     bit length of a non-negative value (0 for 0)
//   fit_quot   rnd(num * 2^k / den): num << k for k >= 0, else den << -k
//   dyadic_fit SPEC 1.4 steps 1-6: (m, k, saturated) of num / den in [k_lo, k_hi]
//
// Rounding codes: 0 floor, 1 half_up, 2 half_even, 3 half_away (the tie rules a run selects)
// and 4 ceil (only the requantizer's fitted scale uses it).  Widths: 128-bit signed
// intermediates; every operand the callers pass is below 2^62 in magnitude (SPEC bounds), so
// nothing here can wrap.

localparam [2:0] RC_FLOOR = 3'd0, RC_HALF_UP = 3'd1, RC_HALF_EVEN = 3'd2, RC_HALF_AWAY = 3'd3,
                 RC_CEIL = 3'd4;

function automatic signed [127:0] round_qr(input signed [127:0] q, input signed [127:0] r,
                                           input signed [127:0] d, input neg, input [2:0] code);
    reg signed [127:0] two_r;
    begin
        two_r = r <<< 1;
        if (code == RC_FLOOR)          round_qr = q;
        else if (code == RC_CEIL)      round_qr = (r > 0) ? q + 1 : q;
        else if (two_r > d)            round_qr = q + 1;
        else if (two_r < d)            round_qr = q;
        else if (code == RC_HALF_UP)   round_qr = q + 1;                 // tie: toward +inf
        else if (code == RC_HALF_EVEN) round_qr = q + {127'd0, q[0]};    // tie: to even
        else if (code == RC_HALF_AWAY) round_qr = neg ? q : q + 1;       // tie: away from 0
        else                           round_qr = q;                     // (no other code)
    end
endfunction

function automatic signed [127:0] div_round(input signed [127:0] a, input signed [127:0] b,
                                            input [2:0] code);
    reg signed [127:0] q, r;
    begin
        q = a / b;                    // truncates toward 0 ...
        r = a % b;                    // ... with the sign of a
        if (r != 0 && a < 0) begin    // floor quotient, 0 <= r < b
            q = q - 1;
            r = r + b;
        end
        div_round = round_qr(q, r, b, a < 0, code);
    end
endfunction

function automatic integer bitlen(input [127:0] x);        // a priority encoder, 7 steps
    reg [127:0] y;
    begin
        y = x;
        bitlen = 0;
        if (y[127:64] != 0) begin bitlen = bitlen + 64; y = y >> 64; end
        if (y[63:32]  != 0) begin bitlen = bitlen + 32; y = y >> 32; end
        if (y[31:16]  != 0) begin bitlen = bitlen + 16; y = y >> 16; end
        if (y[15:8]   != 0) begin bitlen = bitlen + 8;  y = y >> 8;  end
        if (y[7:4]    != 0) begin bitlen = bitlen + 4;  y = y >> 4;  end
        if (y[3:2]    != 0) begin bitlen = bitlen + 2;  y = y >> 2;  end
        if (y[1]      != 0) begin bitlen = bitlen + 1;  y = y >> 1;  end
        bitlen = bitlen + {31'd0, y[0]};
    end
endfunction

function automatic signed [127:0] fit_quot(input signed [127:0] num, input signed [127:0] den,
                                           input integer k, input [2:0] code);
    begin
        if (k >= 0)
            fit_quot = div_round(num <<< k, den, code);
        else if (bitlen(den) - k >= 63)      // den * 2^-k >= 2^62 > 2 num: quotient < 1/2
            fit_quot = (code == RC_CEIL && num > 0) ? 128'sd1 : 128'sd0;
        else
            fit_quot = div_round(num, den <<< (-k), code);
    end
endfunction

// (m, k) with m * 2^-k ~ num / den, m normalized to m_bits bits; k outside [k_lo, k_hi]:
// refit at k_hi (mantissa bits lost, possibly m = 0) or saturate at k_lo (m = 2^m_bits - 1,
// sat = 1).  num = 0: m = 0, k = 0 clamped into the range.  Bounds (SPEC 1.4):
// 0 <= num <= 2^61 - 1, 1 <= den <= 2^(61 - m_bits) - 1.
task automatic dyadic_fit(input signed [127:0] num, input signed [127:0] den, input integer m_bits,
                          input integer k_lo, input integer k_hi, input [2:0] code,
                          output signed [127:0] m, output integer k, output sat);
    reg signed [127:0] top;
    begin
        sat = 1'b0;
        if (num == 0) begin
            m = 0;
            k = (0 < k_lo) ? k_lo : ((0 > k_hi) ? k_hi : 0);
        end else begin
            top = 128'sd1 <<< m_bits;
            k = m_bits - 1 - (bitlen(num) - bitlen(den));
            if (fit_quot(num, den, k, RC_FLOOR) < (top >>> 1))   // normalize on the floor
                k = k + 1;
            m = fit_quot(num, den, k, code);
            if (m >= top) begin                                  // rounding carry: exact halving
                m = m >>> 1;
                k = k - 1;
            end
            if (k > k_hi) begin                                  // tiny: refit at k_hi
                m = fit_quot(num, den, k_hi, code);
                k = k_hi;
            end else if (k < k_lo) begin                         // huge: saturate
                m = top - 1;
                k = k_lo;
                sat = 1'b1;
            end
        end
    end
endtask
