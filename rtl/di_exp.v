// DI-Exp, one element per evaluation: the integer algorithm of intsim/exp.py
// (docs/SPEC.md section 5), as combinational logic.
//
//   inputs : x      max-subtracted input, -(2^62 - 1) <= x <= 0 (two's complement)
//            m, k   the row's dyadic scale m * 2^-k, 1 <= m <= 2^31 - 1, |k| <= 2^20
//            rnd    tie rule of the run: 0 floor, 1 half_up, 2 half_even, 3 half_away
//   outputs: out    ~= T * exp(x * m * 2^-k), 0 <= out <= T
//            t_unit T = -t, the row unit, 1 <= T <= 2^30
//
// Steps (64-bit, exactly as the spec writes them):
//   0a m_f = m + (m >> 1) - (m >> 4)                  m * log2(e), log2(e) ~ 23/16
//   0b j   = max(0, k - 29 - bitlen(m_f)),  k' = k - j
//   0c x'  = rnd(x / 2^j)                              (rounding right shift)
//   1  T   = max(1, rnd(2^k' / m_f))  (T = 1 for k' <= 0)
//   2  q   = floor(-x' / T)
//   3  r   = x' + q * T                                in (-T, 0]
//   4  e   = (r >>> 1) + T                             arithmetic shift
//   5  out = e >> q, 0 when q >= 63
// Bounds: m_f < 2^32, 2^k' <= 2^61, T <= 2^30, -x' <= 2^62 - 1, q * T <= -x'.
`default_nettype none

module di_exp (
    input  wire signed [63:0] x,
    input  wire        [31:0] m,
    input  wire signed [31:0] k,
    input  wire        [1:0]  rnd,
    output reg         [31:0] out,
    output reg         [31:0] t_unit
);
    localparam [1:0] FLOOR = 2'd0, HALF_UP = 2'd1, HALF_EVEN = 2'd2, HALF_AWAY = 2'd3;

    // q + r/d rounded by the tie rule (q = floor quotient, 0 <= r < d; neg: dividend < 0)
    function automatic signed [63:0] round_qr(input signed [63:0] q, input [63:0] r,
                                              input [63:0] d, input neg, input [1:0] mode);
        reg [64:0] two_r;
        begin
            two_r = {r, 1'b0};
            if (mode == FLOOR)              round_qr = q;
            else if (two_r > {1'b0, d})     round_qr = q + 64'sd1;
            else if (two_r < {1'b0, d})     round_qr = q;
            else if (mode == HALF_UP)       round_qr = q + 64'sd1;
            else if (mode == HALF_EVEN)     round_qr = q + {63'd0, q[0]};
            else                            round_qr = neg ? q : q + 64'sd1;   // HALF_AWAY
        end
    endfunction

    reg        [63:0] m64, mf, num, tq, tr, n, q, e;
    reg signed [63:0] k64, jj, j, kk, xs, xf, r, T;
    integer i, bl;

    always @* begin
        // step 0: log2(e) by shift-add, normalization j
        m64 = {32'd0, m};
        mf  = m64 + (m64 >> 1) - (m64 >> 4);
        bl  = 0;
        for (i = 0; i < 64; i = i + 1)
            if (mf[i]) bl = i + 1;
        k64 = k;                                   // sign-extended
        jj  = k64 - 64'sd29 - bl;
        j   = (jj > 0) ? jj : 64'sd0;
        kk  = k64 - j;
        // step 1: T = max(1, rnd(2^k' / m_f))
        if (kk <= 0) begin
            T = 64'sd1;
        end else begin
            num = 64'd1 << kk;
            tq  = num / mf;
            tr  = num % mf;
            T   = round_qr(tq, tr, mf, 1'b0, rnd);
            if (T < 1) T = 64'sd1;
        end
        // step 0c: x' = rnd(x / 2^j)
        if (j == 0) begin
            xs = x;
        end else if (j >= 63) begin
            xs = (rnd == FLOOR && x < 0) ? -64'sd1 : 64'sd0;
        end else begin
            xf = x >>> j;
`ifdef DI_EXP_WRONG
            xs = xf;                            // WRONG (rtl/di_exp_wrong.v): x' = floor(x / 2^j)
`else
            xs = round_qr(xf, x - (xf <<< j), 64'd1 << j, x < 0, rnd);
`endif
        end
        // steps 2-5
        n      = -xs;                              // 0 <= n <= 2^62 - 1
        q      = n / T;
        r      = q * T - n;                        // in (-T, 0]
        e      = (r >>> 1) + T;                    // in [1, T]
        out    = (q >= 63) ? 32'd0 : e >> q;
        t_unit = T[31:0];
    end
endmodule

`default_nettype wire
