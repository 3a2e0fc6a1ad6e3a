// The per-token requantizer of intsim (intsim/requant.py, docs/SPEC.md section 3) as a
// streaming module: one row of exact integers in, that row's codes out, with the row's zero
// point and fitted dyadic scale.  SIMULATION-LEVEL Verilog: the row's scale and every code
// are computed by behavioural functions (wide `/` and `%` stand for the divider a design
// would build; rtl/intsim_arith.vh); the interface, the row buffer and the arithmetic's
// values are what a design must reproduce.  Accepted by Icarus Verilog and Verilator 5.
//
// Parameter
//   ROUNDING  the run's tie rule: 0 floor, 1 half_up (the spec's default), 2 half_even,
//             3 half_away; every division and, in range mode, the scale fit use it
//   MAXC      longest row the buffer holds (elements)
//
// Configuration (held for a row's input beats; the row's values are latched at in_last):
//   cfg_bits  output width b, 2..16      cfg_sym   1: symmetric signed codes, 0: asymmetric
//   cfg_mbits mantissa width m_bits      cfg_klo, cfg_khi  spec.k_range of the final k
//   cfg_range 1: requant_mode "range" (the paper's codes), 0: "fitted" (the default)
//
// Input stream (valid/ready; a beat moves when in_valid && in_ready):
//   in_v      one element v, |v| <= 2^61 - 1 (two's complement)
//   in_m, in_k  the row's input scale m_in * 2^-k_in, 0 <= m_in <= 2^28, |k_in| <= 2^20
//   in_last   the row's last element
// Output stream (valid/ready), one beat per element, the row's values on every beat:
//   out_q     the code (unsigned asymmetric, signed symmetric), sign-extended to 32 bits
//   out_zp    zero point (0 when symmetric)     out_m, out_k  the fitted scale m * 2^-k
//   out_sat   1: the row's scale saturated at k_lo (SPEC 15 counts it)
//   out_last  the row's last code
//
// Per row (SPEC 3; Q = 2^b - 1 asymmetric, 2^(b-1) - 1 symmetric; rnd = ROUNDING):
//   1 range     lo = min(0, min v), R = max(0, max v) - lo   (symmetric: lo = 0, R = max|v|)
//   2 pre-shift sh = max(0, bitlen(R) - 32), v' = v >>> sh (floor); lo', R' from v' (the
//               floor shift is monotonic, so from min v >>> sh and max v >>> sh)
//   3 scale     (m, e, sat) = dyadic_fit(m_in R', Q) in [k_lo - k_in + sh, k_hi - k_in + sh],
//               ceil in fitted mode, rnd in range mode; k = e + k_in - sh (k_lo..k_hi
//               clamp of 0 when m = 0)
//   4 codes     fitted rows (not saturated, m > 0, bitlen(m) - min(e, 0) <= 62):
//                 zp = rnd(-lo' m_in 2^e / m), q = clamp(rnd(v' m_in 2^e / m) + zp, lo_q, Q)
//               other rows: zp = rnd(-lo' Q / R'), q = clamp(rnd(v' Q / R') + zp, lo_q, Q)
//               lo_q = 0 (asymmetric) or -Q (symmetric)
//   5 zero row  R' = 0: q = 0, zp = 0, m = 0, k = 0 clamped into [k_lo, k_hi]
// Bounds: |v'| <= 2^32, m_in R' <= 2^60, |v' m_in| <= 2^60, |v' Q| < 2^48 (SPEC 3).
`default_nettype none

module requant #(
    parameter integer ROUNDING = 1,
    parameter integer MAXC = 65536
) (
    input  wire               clk,
    input  wire               rst,
    input  wire        [4:0]  cfg_bits,
    input  wire               cfg_sym,
    input  wire        [4:0]  cfg_mbits,
    input  wire signed [31:0] cfg_klo,
    input  wire signed [31:0] cfg_khi,
    input  wire               cfg_range,
    input  wire               in_valid,
    output wire               in_ready,
    input  wire signed [63:0] in_v,
    input  wire        [31:0] in_m,
    input  wire signed [31:0] in_k,
    input  wire               in_last,
    output wire               out_valid,
    input  wire               out_ready,
    output reg  signed [31:0] out_q,
    output wire signed [31:0] out_zp,
    output wire        [31:0] out_m,
    output wire signed [31:0] out_k,
    output wire               out_sat,
    output wire               out_last
);
`include "intsim_arith.vh"

    localparam [2:0] RND = ROUNDING[2:0];

    reg signed [63:0] mem [0:MAXC-1];          // the row buffer
    reg               emitting;                // 0: loading a row, 1: emitting its codes
    reg        [31:0] cnt;                     // elements loaded / emitted so far
    reg        [31:0] n_row;                   // the row's length
    reg signed [63:0] vmin, vmax;              // running range of the row (unshifted)

    // the row's parameters, latched at in_last from the combinational block below
    reg         [31:0] r_sh;
    reg signed [127:0] r_Rs;                   // R' (divisor of range codes)
    reg signed [127:0] r_Q, r_qlo;
    reg signed [127:0] r_min;                  // m_in of the fitted codes
    reg signed [127:0] r_m;                    // fitted mantissa
    reg signed [127:0] r_zp;
    reg signed  [31:0] r_e, r_k;
    reg               r_by_scale, r_zero, r_sat;

    assign in_ready  = !emitting;
    assign out_valid = emitting;
    assign out_last  = emitting && (cnt == n_row - 1);
    assign out_zp    = r_zp[31:0];
    assign out_m     = r_m[31:0];
    assign out_k     = r_k;
    assign out_sat   = r_sat;

    wire fire_in  = in_valid && in_ready;
    wire fire_out = out_valid && out_ready;

    // ---- row parameters from the range including the current beat (used at in_last)
    reg signed [63:0]  n_min, n_max;
    reg signed [127:0] mn, mx, lo_s, Rs, Q, R, fm, zq, m_in;
    reg        [31:0]  sh;
    integer            fe, fk_lo, fk_hi;
    reg                fsat, by_scale;
    always @* begin
        n_min = (cnt == 0 || in_v < vmin) ? in_v : vmin;
        n_max = (cnt == 0 || in_v > vmax) ? in_v : vmax;
        Q = cfg_sym ? ((128'sd1 <<< (cfg_bits - 1)) - 1) : ((128'sd1 <<< cfg_bits) - 1);
        m_in = $signed({96'd0, in_m});
        mn = 0; mx = 0; R = 0; lo_s = 0; Rs = 0; fm = 0; zq = 0;
        sh = 0; fe = 0; fk_lo = 0; fk_hi = 0; fsat = 1'b0; by_scale = 1'b0;
        // the row's scale is needed at its last beat only (this also keeps the simulation
        // from refitting on every element)
        if (in_valid && in_last) begin
            // 1-2: range, pre-shift
            mn = {{64{n_min[63]}}, n_min};                // sign-extended to 128 bits
            mx = {{64{n_max[63]}}, n_max};
            if (cfg_sym) R = (-mn > mx) ? -mn : mx;
            else         R = ((mx > 0) ? mx : 128'sd0) - ((mn < 0) ? mn : 128'sd0);
            sh = (bitlen(R) > 32) ? bitlen(R) - 32 : 0;
            if (cfg_sym) begin
                lo_s = 0;
                Rs   = (-(mn >>> sh) > (mx >>> sh)) ? -(mn >>> sh) : (mx >>> sh);
            end else begin
                lo_s = ((mn >>> sh) < 0) ? (mn >>> sh) : 128'sd0;
                Rs   = (((mx >>> sh) > 0) ? (mx >>> sh) : 128'sd0) - lo_s;
            end
            // 3: the scale
            fk_lo = cfg_klo - in_k + $signed(sh);
            fk_hi = cfg_khi - in_k + $signed(sh);
            dyadic_fit(m_in * Rs, Q, {27'd0, cfg_mbits}, fk_lo, fk_hi,
                       cfg_range ? RND : RC_CEIL, fm, fe, fsat);
            by_scale = !cfg_range && !fsat && fm > 0 &&
                       (bitlen(fm) - ((fe < 0) ? fe : 0) <= 62);
            // 4: the zero point
            if (Rs == 0 || cfg_sym)
                zq = 0;
            else if (by_scale)
                zq = code_div(-lo_s * m_in, fm, fe);
            else
                zq = div_round(-lo_s * Q, Rs, RND);
        end
    end

    // rnd(a * 2^e / m): a << e for e >= 0, else m << -e
    function automatic signed [127:0] code_div(input signed [127:0] a, input signed [127:0] m,
                                               input integer e);
        begin
            if (e >= 0) code_div = div_round(a <<< e, m, RND);
            else        code_div = div_round(a, m <<< (-e), RND);
        end
    endfunction

    // ---- the code of one buffered element against the latched row parameters
    wire signed [63:0] cur = mem[cnt];         // (a continuous read: Icarus compiles an
    reg signed [127:0] vs;                     //  always @* over the array per word)
    reg signed [127:0] t;
    always @* begin
        vs = $signed({{64{cur[63]}}, cur}) >>> r_sh;
        if (r_zero)
            t = 0;
        else if (r_by_scale)
            t = code_div(vs * r_min, r_m, r_e) + r_zp;
        else
            t = div_round(vs * r_Q, r_Rs, RND) + r_zp;
`ifdef REQUANT_WRONG
        out_q = t[31:0];                 // WRONG (rtl/requant_wrong.v): no clamp to [lo_q, Q]
`else
        if (t > r_Q)        out_q = r_Q[31:0];
        else if (t < r_qlo) out_q = r_qlo[31:0];
        else                out_q = t[31:0];
`endif
    end

    always @(posedge clk) begin
        if (rst) begin
            emitting <= 1'b0;
            cnt      <= 0;
        end else if (!emitting) begin
            if (fire_in) begin
                if (cnt >= MAXC) $fatal(1, "requant: a row longer than MAXC = %0d", MAXC);
                mem[cnt] <= in_v;
                vmin     <= n_min;
                vmax     <= n_max;
                if (in_last) begin
                    n_row      <= cnt + 1;
                    cnt        <= 0;
                    emitting   <= 1'b1;
                    r_sh       <= sh;
                    r_Rs       <= Rs;
                    r_Q        <= Q;
                    r_qlo      <= cfg_sym ? -Q : 128'sd0;
                    r_min      <= m_in;
                    r_m        <= fm;
                    r_e        <= fe;
                    r_zero     <= (Rs == 0);
                    r_by_scale <= by_scale;
                    r_sat      <= fsat && (Rs != 0);
                    r_zp       <= zq;
                    // k = e + k_in - sh; a zero mantissa gives the range's clamp of 0
                    r_k        <= (Rs == 0 || fm == 0)
                                  ? ((cfg_klo > 0) ? cfg_klo : ((cfg_khi < 0) ? cfg_khi : 32'sd0))
                                  : fe + in_k - $signed(sh);
                end else begin
                    cnt <= cnt + 1;
                end
            end
        end else if (fire_out) begin
            if (cnt == n_row - 1) begin
                emitting <= 1'b0;
                cnt      <= 0;
            end else begin
                cnt <= cnt + 1;
            end
        end
    end
endmodule

`default_nettype wire
