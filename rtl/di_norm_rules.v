// Test wrapper of rtl/di_norm.v (or rtl/di_norm_wrong.v: whichever defines module `di_norm`
// in the same build): one instance per tie rule, ROUNDING = 0 floor, 1 half_up, 2 half_even,
// 3 half_away, so that ONE build (one Verilator compile) checks every value of the parameter.
// `rule` picks the instance a row goes to (the scoreboard sets it per record from the
// record's tie rule); an input beat is accepted only while every other instance is idle, and
// the outputs come from the instance that is emitting.  Not part of a design: DI-Norm is
// rtl/di_norm.v.
`default_nettype none

module di_norm_rules #(
    parameter integer MAXC = 65536
) (
    input  wire               clk,
    input  wire               rst,
    input  wire        [1:0]  rule,
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
    output reg  signed [31:0] out_q,
    output reg  signed [31:0] out_zp,
    output reg         [31:0] out_m,
    output reg  signed [31:0] out_k,
    output reg                out_sat,
    output reg         [31:0] out_root,
    output reg                out_last
);
    wire        [3:0]  rdy, vld, sat, lst;
    wire signed [31:0] q [0:3];
    wire signed [31:0] zp [0:3];
    wire        [31:0] m [0:3];
    wire signed [31:0] k [0:3];
    wire        [31:0] rt [0:3];

    genvar g;
    generate
        for (g = 0; g < 4; g = g + 1) begin : tie
            di_norm #(.ROUNDING(g), .MAXC(MAXC)) u (
                .clk(clk), .rst(rst), .cfg_bits(cfg_bits), .cfg_fixed(cfg_fixed), .cfg_mbits(cfg_mbits),
                .cfg_klo(cfg_klo), .cfg_khi(cfg_khi),
                .in_valid(in_valid && in_ready && rule == g), .in_ready(rdy[g]), .in_q(in_q),
                .in_zp(in_zp), .in_last(in_last),
                .out_valid(vld[g]), .out_ready(out_ready), .out_q(q[g]), .out_zp(zp[g]), .out_m(m[g]),
                .out_k(k[g]), .out_sat(sat[g]), .out_root(rt[g]), .out_last(lst[g]));
        end
    endgenerate

    assign in_ready  = &rdy;                 // every instance idle (accumulating)
    assign out_valid = |vld;
    integer i;
    always @* begin
        {out_q, out_zp, out_m, out_k, out_sat, out_root, out_last} = 0;
        for (i = 0; i < 4; i = i + 1)
            if (vld[i]) begin
                out_q = q[i]; out_zp = zp[i]; out_m = m[i]; out_k = k[i]; out_sat = sat[i];
                out_root = rt[i]; out_last = lst[i];
            end
    end
endmodule

`default_nettype wire
