// Test wrapper of rtl/requant.v (or rtl/requant_wrong.v: whichever defines module `requant`
// in the same build): one instance per tie rule, ROUNDING = 0 floor, 1 half_up, 2 half_even,
// 3 half_away, so that ONE build (one Verilator compile) checks every value of the parameter.
// `rule` picks the instance a row goes to (the scoreboard sets it per record from the
// record's tie rule); an input beat is accepted only while every other instance is idle, and
// the outputs come from the instance that is emitting, so a rule change between records
// never cuts a row short.  Not part of a design: the requantizer is rtl/requant.v.
`default_nettype none

module requant_rules #(
    parameter integer MAXC = 65536
) (
    input  wire               clk,
    input  wire               rst,
    input  wire        [1:0]  rule,
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
    output reg  signed [31:0] out_zp,
    output reg         [31:0] out_m,
    output reg  signed [31:0] out_k,
    output reg                out_sat,
    output reg                out_last
);
    wire        [3:0]  rdy, vld, sat, lst;
    wire signed [31:0] q [0:3];
    wire signed [31:0] zp [0:3];
    wire        [31:0] m [0:3];
    wire signed [31:0] k [0:3];

    genvar g;
    generate
        for (g = 0; g < 4; g = g + 1) begin : tie
            requant #(.ROUNDING(g), .MAXC(MAXC)) u (
                .clk(clk), .rst(rst), .cfg_bits(cfg_bits), .cfg_sym(cfg_sym), .cfg_mbits(cfg_mbits),
                .cfg_klo(cfg_klo), .cfg_khi(cfg_khi), .cfg_range(cfg_range),
                .in_valid(in_valid && in_ready && rule == g), .in_ready(rdy[g]), .in_v(in_v),
                .in_m(in_m), .in_k(in_k), .in_last(in_last),
                .out_valid(vld[g]), .out_ready(out_ready), .out_q(q[g]), .out_zp(zp[g]), .out_m(m[g]),
                .out_k(k[g]), .out_sat(sat[g]), .out_last(lst[g]));
        end
    endgenerate

    assign in_ready  = &rdy;                 // every instance idle (loading)
    assign out_valid = |vld;
    integer i;
    always @* begin
        {out_q, out_zp, out_m, out_k, out_sat, out_last} = 0;
        for (i = 0; i < 4; i = i + 1)
            if (vld[i]) begin
                out_q = q[i]; out_zp = zp[i]; out_m = m[i]; out_k = k[i]; out_sat = sat[i];
                out_last = lst[i];
            end
    end
endmodule

`default_nettype wire
