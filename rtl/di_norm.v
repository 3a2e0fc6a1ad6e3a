// DI-Norm (intsim/norm.py, docs/SPEC.md section 8.2) as a streaming module: a row of codes in,
// the same codes out with the row's new scale.  Its arithmetic is the row scale: the sum of
// squares, the pre-shift, the integer square root and the dyadic fit of sqrt(C) / sqrt(sumsq);
// the codes and zero point pass through unchanged (buffered while the root is computed).
// SIMULATION-LEVEL Verilog: the square root is a real sequential unit (the spec's 31-step
// restoring digit recurrence, one step per clock), the fit and the per-model constant are
// behavioural functions (rtl/intsim_arith.vh); the values are normative, the structure is
// not.  Accepted by Icarus Verilog and Verilator 5.
//
// Parameter
//   ROUNDING  the run's tie rule for the fit: 0 floor, 1 half_up (default), 2 half_even,
//             3 half_away
//
// Configuration (held for a row's input beats; latched at in_last):
//   cfg_bits  the input codes' width (the fixed pre-shift's bound)
//   cfg_fixed 1: norm_preshift "fixed", 0: "row" (the default)
//   cfg_mbits mantissa width m_bits      cfg_klo, cfg_khi  spec.k_range of the final k
// Input stream (valid/ready): in_q a code, in_zp the row's zero point (|q - zp| <= 2^16 - 1),
//   in_last the row's last code.  C, the row length (<= MAXC), is counted.
// Output stream (valid/ready), one beat per code, the row's values on every beat: out_q the
//   code, out_zp the zero point (both unchanged), out_m, out_k the new scale m * 2^-k,
//   out_sat 1 when it saturated at k_lo, out_root r (the square root, for inspection),
//   out_last the row's last code.
//
// Per row (SPEC 8.2):
//   1 sumsq = sum (q - zp)^2                               <= C (2^16 - 1)^2 < 2^48
//   2 P = (62 - bitlen(sumsq)) >> 1 (row), or (62 - bitlen(C (2^bits - 1)^2)) >> 1 (fixed)
//   3 r = isqrt(sumsq << 2P) = floor(sqrt(sumsq) 2^P)      sumsq << 2P <= 2^62 - 1, r < 2^31
//   4 P' = (61 - bitlen(C)) >> 1, n_C = isqrt(C << 2P')    the per-model constant (a design
//     stores it; here a function of the counted C, by the same recurrence)
//   5 (m, e, sat) = dyadic_fit(n_C, r) in [k_lo - P' + P, k_hi - P' + P], k = e + P' - P
//   sumsq = 0: m = 0, k = 0 clamped into [k_lo, k_hi]
`default_nettype none

module di_norm #(
    parameter integer ROUNDING = 1,
    parameter integer MAXC = 65536
) (
    input  wire               clk,
    input  wire               rst,
    input  wire        [4:0]  cfg_bits,
    input  wire               cfg_fixed,
    input  wire        [4:0]  cfg_mbits,
    input  wire signed [31:0] cfg_klo,
    input  wire signed [31:0] cfg_khi,
    input  wire               in_valid,
    output wire               in_ready,
    input  wire signed [31:0] in_q,
    input  wire signed [31:0] in_zp,
    input  wire               in_last,
    output wire               out_valid,
    input  wire               out_ready,
    output wire signed [31:0] out_q,
    output wire signed [31:0] out_zp,
    output wire        [31:0] out_m,
    output wire signed [31:0] out_k,
    output wire               out_sat,
    output wire        [31:0] out_root,
    output wire               out_last
);
`include "intsim_arith.vh"

    localparam [2:0] RND = ROUNDING[2:0];
    localparam [1:0] S_ACC = 2'd0, S_ROOT = 2'd1, S_OUT = 2'd2;

    reg signed [31:0] mem [0:MAXC-1];          // the row's codes, passed through
    reg         [1:0] state;
    reg        [63:0] sumsq;                   // running sum of squares, < 2^48
    reg        [31:0] cnt;                     // codes of the row so far
    reg        [31:0] r_C;                     // the row's length C
    reg        [31:0] r_P;                     // its pre-shift P
    reg signed [31:0] r_zp;                    // its zero point
    reg         [4:0] r_mbits;                 // the configuration of the fit, latched at in_last
    reg signed [31:0] r_klo, r_khi;            // (the next row's may be on the inputs already)
    reg               r_zero;                  // sumsq = 0
    reg        [63:0] rem, res, bitv;          // the square-root unit (SPEC 1.4)
    reg         [4:0] step;
    reg        [63:0] root;

    assign in_ready  = (state == S_ACC);
    assign out_valid = (state == S_OUT);
    assign out_root  = root[31:0];
    assign out_q     = mem[cnt];
    assign out_zp    = r_zp;
    assign out_last  = out_valid && (cnt == r_C - 1);
    wire fire_in  = in_valid && in_ready;
    wire fire_out = out_valid && out_ready;

    // floor(sqrt(n)), 0 <= n <= 2^62 - 1: the 31-step digit recurrence, unrolled (used for the
    // per-model constant n_C only; the row's root goes through the sequential unit below)
    function automatic [63:0] isqrt62(input [63:0] n);
        reg [63:0] x, r, b;
        integer i;
        begin
            x = n;
            r = 0;
            b = 64'd1 << 60;
            for (i = 0; i < 31; i = i + 1) begin
                if (x >= r + b) begin
                    x = x - (r + b);
                    r = (r >> 1) + b;
                end else begin
                    r = r >> 1;
                end
                b = b >> 2;
            end
            isqrt62 = r;
        end
    endfunction

    // ---- the accepted beat's square and the row's pre-shift (used at in_last)
    reg signed [63:0] d;
    reg        [63:0] sq_n, dmax;
    reg        [31:0] C_n, P_n;
    always @* begin
        d    = {{32{in_q[31]}}, in_q} - {{32{in_zp[31]}}, in_zp};
        sq_n = sumsq + $unsigned(d * d);                       // d^2 <= (2^16 - 1)^2
        C_n  = cnt + 1;
        dmax = (64'd1 << cfg_bits) - 1;
        if (cfg_fixed) P_n = (62 - bitlen({64'd0, {32'd0, C_n} * dmax * dmax})) >> 1;
        else           P_n = (62 - bitlen({64'd0, sq_n})) >> 1;
    end

    // ---- one digit step of the square-root unit
    reg [63:0] trial, rem_n, res_n, root_n;
    always @* begin
        trial = res + bitv;
        if (rem >= trial) begin
            rem_n = rem - trial;
            res_n = (res >> 1) + bitv;
        end else begin
            rem_n = rem;
            res_n = res >> 1;
        end
`ifdef DI_NORM_WRONG
        // WRONG (rtl/di_norm_scale_wrong.v): the recurrence's optional rounding step
        // (remainder > root: round up) makes r the NEAREST integer to the root, not its floor
        root_n = res_n + ((rem_n > res_n) ? 64'd1 : 64'd0);
`else
        root_n = res_n;
`endif
    end

    // ---- step 4-5: the fit, from the latched C, P and r
    reg        [31:0]  p2;
    reg signed [127:0] n_c, fm;
    integer            fe, k0;
    reg                fsat;
    always @* begin
        p2  = (61 - bitlen({96'd0, r_C})) >> 1;
        n_c = {64'd0, isqrt62({32'd0, r_C} << (2 * p2))};
        k0  = (r_klo > 0) ? r_klo : ((r_khi < 0) ? r_khi : 0);
        if (r_zero) begin
            fm   = 0;
            fe   = k0;
            fsat = 1'b0;
        end else begin
            dyadic_fit(n_c, {64'd0, root}, {27'd0, r_mbits},
                       r_klo - $signed(p2) + $signed(r_P), r_khi - $signed(p2) + $signed(r_P),
                       RND, fm, fe, fsat);
            fe = (fm == 0) ? k0 : fe + $signed(p2) - $signed(r_P);
        end
    end
    assign out_m   = fm[31:0];
    assign out_k   = fe;
    assign out_sat = fsat;

    always @(posedge clk) begin
        if (rst) begin
            state <= S_ACC;
            sumsq <= 0;
            cnt   <= 0;
            root  <= 0;
        end else case (state)
            S_ACC: if (fire_in) begin
                if (cnt >= MAXC) $fatal(1, "di_norm: a row longer than MAXC = %0d", MAXC);
                mem[cnt] <= in_q;
                if (in_last) begin
                    r_C    <= C_n;
                    r_P    <= P_n;
                    r_zero <= (sq_n == 0);
                    r_zp    <= in_zp;
                    r_mbits <= cfg_mbits;
                    r_klo   <= cfg_klo;
                    r_khi   <= cfg_khi;
                    rem    <= sq_n << (2 * P_n);
                    res    <= 0;
                    bitv   <= 64'd1 << 60;
                    step   <= 0;
                    sumsq  <= 0;
                    cnt    <= 0;
                    root   <= 0;
                    state  <= (sq_n == 0) ? S_OUT : S_ROOT;
                end else begin
                    sumsq <= sq_n;
                    cnt   <= C_n;
                end
            end
            S_ROOT: begin
                rem  <= rem_n;
                res  <= res_n;
                bitv <= bitv >> 2;
                step <= step + 1;
                if (step == 5'd30) begin
                    root  <= root_n;
                    state <= S_OUT;
                end
            end
            default: if (fire_out) begin
                if (cnt == r_C - 1) begin
                    cnt   <= 0;
                    state <= S_ACC;
                end else begin
                    cnt <= cnt + 1;
                end
            end
        endcase
    end
endmodule

`default_nettype wire
